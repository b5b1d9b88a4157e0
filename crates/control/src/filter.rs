//! EC2 filters: `Filter.N.Name` with values; a resource matches when, for every filter, one of
//! its values matches (values may use EC2's `*` and `?` wildcards).

pub use vireo_ec2_api::query::Filter;

/// EC2's wildcard match: `*` any run of characters, `?` exactly one, `\` escapes.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with one backtrack point: linear in practice, never exponential.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '\\' && pi + 1 < p.len() && p[pi + 1] == t[ti] {
            pi += 2;
            ti += 1;
        } else if pi < p.len()
            && (p[pi] == '?' || (p[pi] == t[ti] && p[pi] != '*' && p[pi] != '\\'))
        {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Matching a filter's values against a resource's.
pub trait FilterMatch {
    /// Whether any of `candidates` matches any of the filter's values.
    fn matches_any<'a>(&self, candidates: impl IntoIterator<Item = &'a str> + Clone) -> bool;
}

impl FilterMatch for Filter {
    fn matches_any<'a>(&self, candidates: impl IntoIterator<Item = &'a str> + Clone) -> bool {
        self.values
            .iter()
            .any(|v| candidates.clone().into_iter().any(|c| wildcard_match(v, c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("web-*", "web-1"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("t3.?ano", "t3.nano"));
        assert!(!wildcard_match("t3.?ano", "t3.nanoo"));
        assert!(wildcard_match("a*b*c", "aXXbYYc"));
        assert!(!wildcard_match("a*b*c", "aXXbYY"));
        assert!(wildcard_match("\\*x", "*x"));
        assert!(!wildcard_match("\\*x", "ax"));
        assert!(wildcard_match("exact", "exact"));
        assert!(!wildcard_match("exact", "exac"));
    }

    #[test]
    fn filter_matches_any_value() {
        let f = Filter {
            name: "instance-state-name".into(),
            values: vec!["running".into(), "stopped".into()],
        };
        assert!(f.matches_any(["stopped"]));
        assert!(!f.matches_any(["pending"]));
    }
}
