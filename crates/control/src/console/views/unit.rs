//! Unit tests of the views' request parsing (the instance list's filters).

use super::*;

fn names(f: &InstanceFilters) -> Vec<(String, Vec<String>)> {
    f.to_filters()
        .into_iter()
        .map(|f| (f.name, f.values))
        .collect()
}

#[test]
fn the_list_filters_are_describe_instances_filters() {
    let s = |v: &str| Some(v.to_string());
    assert_eq!(names(&InstanceFilters::default()), vec![]);
    let f = InstanceFilters {
        state: s("running"),
        instance_type: s("t3.*"),
        tag_key: s("env"),
        tag_value: s("prod"),
    };
    assert_eq!(
        names(&f),
        vec![
            ("instance-state-name".into(), vec!["running".into()]),
            ("instance-type".into(), vec!["t3.*".into()]),
            ("tag:env".into(), vec!["prod".into()]),
        ]
    );
    let key_only = InstanceFilters {
        tag_key: s("env"),
        state: s(""),
        ..Default::default()
    };
    assert_eq!(
        names(&key_only),
        vec![("tag-key".into(), vec!["env".into()])]
    );
    let value_only = InstanceFilters {
        tag_value: s("prod"),
        ..Default::default()
    };
    assert_eq!(
        names(&value_only),
        vec![("tag-value".into(), vec!["prod".into()])]
    );
}
