"""Instance attributes through boto3 and the AWS CLI: DescribeInstanceAttribute for every attribute
EC2 lists, ModifyInstanceAttribute of termination and stop protection and of the shutdown
behaviour (and RunInstances' parameters for them), what the protections refuse, and a guest
poweroff that terminates its instance."""

import base64

import botocore.exceptions
import pytest

from conftest import aws_cli, console, image_id, instance, wait_console, wait_state


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def launch(ec2, **kw):
    ami = image_id(ec2, "vireo-testguest")
    return ec2.run_instances(ImageId=ami, InstanceType="t3.nano", MinCount=1, MaxCount=1,
                             **kw)["Instances"][0]["InstanceId"]


def attr(ec2, iid, name):
    return ec2.describe_instance_attribute(InstanceId=iid, Attribute=name)


def value(ec2, iid, name, key):
    return attr(ec2, iid, name)[key]["Value"]


def unprotect_and_terminate(ec2, *ids):
    for iid in ids:
        st = instance(ec2, iid)["State"]["Name"]
        if st not in ("terminated", "shutting-down"):
            ec2.modify_instance_attribute(InstanceId=iid, DisableApiTermination={"Value": False})
            ec2.modify_instance_attribute(InstanceId=iid, DisableApiStop={"Value": False})
    ec2.terminate_instances(InstanceIds=list(ids))
    for iid in ids:
        wait_state(ec2, iid, "terminated")


def test_every_attribute_ec2_lists_is_answered(ec2):
    iid = launch(ec2, UserData="attrs", DisableApiTermination=True, DisableApiStop=True,
                 InstanceInitiatedShutdownBehavior="terminate")
    wait_state(ec2, iid, "running")
    names = ec2.meta.service_model.shape_for("InstanceAttributeName").enum
    assert {"disableApiTermination", "disableApiStop", "instanceInitiatedShutdownBehavior"} <= set(names)
    for name in names:
        got = attr(ec2, iid, name)
        assert got["InstanceId"] == iid, name
    assert value(ec2, iid, "instanceType", "InstanceType") == "t3.nano"
    assert base64.b64decode(value(ec2, iid, "userData", "UserData")) == b"attrs"
    assert value(ec2, iid, "disableApiTermination", "DisableApiTermination") is True
    assert value(ec2, iid, "disableApiStop", "DisableApiStop") is True
    assert value(ec2, iid, "instanceInitiatedShutdownBehavior", "InstanceInitiatedShutdownBehavior") == "terminate"
    assert value(ec2, iid, "rootDeviceName", "RootDeviceName") == instance(ec2, iid)["RootDeviceName"]
    assert attr(ec2, iid, "blockDeviceMapping")["BlockDeviceMappings"] == []
    assert attr(ec2, iid, "productCodes")["ProductCodes"] == []
    assert value(ec2, iid, "ebsOptimized", "EbsOptimized") is False
    assert value(ec2, iid, "enaSupport", "EnaSupport") is False
    assert attr(ec2, iid, "enclaveOptions")["EnclaveOptions"] == {"Enabled": False}
    assert value(ec2, iid, "sourceDestCheck", "SourceDestCheck") is True
    groups = attr(ec2, iid, "groupSet")["Groups"]
    assert [g["GroupId"] for g in groups] == [g["GroupId"] for g in instance(ec2, iid)["SecurityGroups"]]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_instance_attribute(InstanceId=iid, Attribute="colour")
    assert error_code(e) == "InvalidParameterValue"
    unprotect_and_terminate(ec2, iid)

    # The defaults of an instance launched without them.
    iid = launch(ec2)
    assert value(ec2, iid, "disableApiTermination", "DisableApiTermination") is False
    assert value(ec2, iid, "disableApiStop", "DisableApiStop") is False
    assert value(ec2, iid, "instanceInitiatedShutdownBehavior", "InstanceInitiatedShutdownBehavior") == "stop"
    assert "Value" not in attr(ec2, iid, "userData").get("UserData", {})
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")


def test_termination_and_stop_protection(ec2):
    guarded = launch(ec2, DisableApiTermination=True)
    free = launch(ec2)
    wait_state(ec2, guarded, "running")
    wait_state(ec2, free, "running")

    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.terminate_instances(InstanceIds=[free, guarded])
    assert error_code(e) == "OperationNotPermitted"
    assert e.value.response["Error"]["Message"] == (
        f"The instance '{guarded}' may not be terminated. Modify its 'disableApiTermination' "
        "instance attribute and try again.")
    # A call naming a protected instance changes none of them.
    assert instance(ec2, free)["State"]["Name"] == "running"
    assert instance(ec2, guarded)["State"]["Name"] == "running"

    # Stop protection, set on a running instance, is in force at once.
    ec2.modify_instance_attribute(InstanceId=guarded, DisableApiStop={"Value": True})
    for kw in ({}, {"Force": True}, {"Hibernate": True}):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.stop_instances(InstanceIds=[guarded], **kw)
        assert error_code(e) == "OperationNotPermitted", kw
        assert "'disableApiStop'" in e.value.response["Error"]["Message"]
    assert instance(ec2, guarded)["State"]["Name"] == "running"

    # The older Attribute/Value form clears it.
    ec2.modify_instance_attribute(InstanceId=guarded, Attribute="disableApiStop", Value="false")
    ec2.stop_instances(InstanceIds=[guarded], Force=True)
    wait_state(ec2, guarded, "stopped")
    # Termination protection holds for a stopped instance too.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.terminate_instances(InstanceIds=[guarded])
    assert error_code(e) == "OperationNotPermitted"
    ec2.modify_instance_attribute(InstanceId=guarded, Attribute="disableApiTermination", Value="false")
    assert value(ec2, guarded, "disableApiTermination", "DisableApiTermination") is False
    ec2.terminate_instances(InstanceIds=[guarded, free])
    wait_state(ec2, guarded, "terminated")
    wait_state(ec2, free, "terminated")
    # A terminated instance's attributes cannot change.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.modify_instance_attribute(InstanceId=guarded, DisableApiTermination={"Value": True})
    assert error_code(e) == "IncorrectInstanceState"


def test_guest_poweroff_terminates_when_the_behaviour_says_so(ec2):
    # Launched with it: the guest powers itself off and the instance is terminated, even with
    # termination protection on (EC2: protection guards the API only).
    iid = launch(ec2, UserData="poweroff", InstanceInitiatedShutdownBehavior="terminate",
                 DisableApiTermination=True)
    wait_state(ec2, iid, "terminated")
    assert instance(ec2, iid)["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"

    # Set later: the first poweroff stops it, the next (after a start) terminates it.
    iid = launch(ec2, UserData="poweroff")
    wait_state(ec2, iid, "stopped")
    ec2.modify_instance_attribute(InstanceId=iid, InstanceInitiatedShutdownBehavior={"Value": "terminate"})
    assert value(ec2, iid, "instanceInitiatedShutdownBehavior", "InstanceInitiatedShutdownBehavior") == "terminate"
    ec2.start_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")
    assert instance(ec2, iid)["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"


def test_modify_refusals(ec2):
    iid = launch(ec2)
    for kw, code in (
        ({"DisableApiTermination": {"Value": True}, "DisableApiStop": {"Value": True}}, "InvalidParameterCombination"),
        ({"InstanceInitiatedShutdownBehavior": {"Value": "hibernate"}}, "InvalidParameterValue"),
        ({"Attribute": "instanceInitiatedShutdownBehavior", "Value": "reboot"}, "InvalidParameterValue"),
        ({"Attribute": "disableApiTermination", "Value": "maybe"}, "InvalidParameterValue"),
        ({"Attribute": "colour", "Value": "red"}, "InvalidParameterValue"),
        # Only a stopped instance's user data changes (EC2's rule).
        ({"UserData": {"Value": b"new"}}, "IncorrectInstanceState"),
        ({"Kernel": {"Value": "aki-12345678"}}, "UnsupportedOperation"),
        ({"EbsOptimized": {"Value": True}}, "UnsupportedOperation"),
        ({"Attribute": "ramdisk", "Value": "ari-12345678"}, "UnsupportedOperation"),
        ({}, "MissingParameter"),
    ):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.modify_instance_attribute(InstanceId=iid, **kw)
        assert error_code(e) == code, kw
    # Nothing changed.
    assert value(ec2, iid, "disableApiTermination", "DisableApiTermination") is False
    assert value(ec2, iid, "instanceInitiatedShutdownBehavior", "InstanceInitiatedShutdownBehavior") == "stop"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        launch(ec2, InstanceInitiatedShutdownBehavior="hibernate")
    assert error_code(e) == "InvalidParameterValue"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.modify_instance_attribute(InstanceId="i-0123456789abcdef0", DisableApiStop={"Value": True})
    assert error_code(e) == "InvalidInstanceID.NotFound"
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")


def test_terraform_aws_instance_reads(ec2):
    """The calls Terraform's aws_instance makes on every refresh besides DescribeInstances: one
    DescribeInstanceAttribute each for disableApiTermination, instanceInitiatedShutdownBehavior,
    disableApiStop and userData; and the updates it sends when those change in the
    configuration (one attribute a call)."""
    iid = launch(ec2, UserData="#cloud-config\n", DisableApiTermination=False,
                 InstanceInitiatedShutdownBehavior="stop")
    wait_state(ec2, iid, "running")
    for _ in range(2):
        inst = instance(ec2, iid)
        assert inst["State"]["Name"] == "running"
        assert value(ec2, iid, "disableApiTermination", "DisableApiTermination") is False
        assert value(ec2, iid, "instanceInitiatedShutdownBehavior", "InstanceInitiatedShutdownBehavior") == "stop"
        assert value(ec2, iid, "disableApiStop", "DisableApiStop") is False
        assert base64.b64decode(value(ec2, iid, "userData", "UserData")) == b"#cloud-config\n"
    ec2.modify_instance_attribute(InstanceId=iid, DisableApiTermination={"Value": True})
    ec2.modify_instance_attribute(InstanceId=iid, DisableApiStop={"Value": True})
    ec2.modify_instance_attribute(InstanceId=iid, InstanceInitiatedShutdownBehavior={"Value": "terminate"})
    assert value(ec2, iid, "disableApiTermination", "DisableApiTermination") is True
    assert value(ec2, iid, "disableApiStop", "DisableApiStop") is True
    assert value(ec2, iid, "instanceInitiatedShutdownBehavior", "InstanceInitiatedShutdownBehavior") == "terminate"
    unprotect_and_terminate(ec2, iid)


def test_aws_cli_instance_attributes(ec2, vireod):
    iid = launch(ec2)
    aws_cli(vireod, "modify-instance-attribute", "--instance-id", iid, "--disable-api-termination")
    got = aws_cli(vireod, "describe-instance-attribute", "--instance-id", iid, "--attribute", "disableApiTermination")
    assert got["DisableApiTermination"]["Value"] is True
    out = aws_cli(vireod, "terminate-instances", "--instance-ids", iid, ok=False)
    assert out.returncode != 0 and "OperationNotPermitted" in out.stderr
    aws_cli(vireod, "modify-instance-attribute", "--instance-id", iid,
            "--instance-initiated-shutdown-behavior", "Value=terminate")
    got = aws_cli(vireod, "describe-instance-attribute", "--instance-id", iid,
                  "--attribute", "instanceInitiatedShutdownBehavior")
    assert got["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    aws_cli(vireod, "modify-instance-attribute", "--instance-id", iid, "--attribute", "disableApiStop", "--value", "true")
    got = aws_cli(vireod, "describe-instance-attribute", "--instance-id", iid, "--attribute", "disableApiStop")
    assert got["DisableApiStop"]["Value"] is True
    out = aws_cli(vireod, "stop-instances", "--instance-ids", iid, ok=False)
    assert out.returncode != 0 and "OperationNotPermitted" in out.stderr
    aws_cli(vireod, "modify-instance-attribute", "--instance-id", iid, "--no-disable-api-termination")
    aws_cli(vireod, "modify-instance-attribute", "--instance-id", iid, "--no-disable-api-stop")
    aws_cli(vireod, "terminate-instances", "--instance-ids", iid)
    wait_state(ec2, iid, "terminated")


def test_user_data_changes_while_stopped_and_the_next_boot_runs_it(ec2, vireod):
    """Terraform's aws_instance changes user_data in place: stop, ModifyInstanceAttribute
    UserData, start."""
    iid = launch(ec2, UserData="first")
    wait_state(ec2, iid, "running")
    wait_console(ec2, iid, "user-data: first")
    ec2.stop_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "stopped")
    ec2.modify_instance_attribute(InstanceId=iid, UserData={"Value": b"second"})
    assert base64.b64decode(value(ec2, iid, "userData", "UserData")) == b"second"
    # Bad base64 in the Attribute/Value form: refused, nothing changed.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.modify_instance_attribute(InstanceId=iid, Attribute="userData", Value="not base64!")
    assert error_code(e) == "InvalidParameterValue"
    assert base64.b64decode(value(ec2, iid, "userData", "UserData")) == b"second"
    ec2.start_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "running")
    out = wait_console(ec2, iid, "user-data: second")
    assert out.count("user-data: first") == 1, "the first boot's line, once"
    # The AWS CLI's form (its blob arguments are base64 text), then none at all.
    ec2.stop_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "stopped")
    aws_cli(vireod, "modify-instance-attribute", "--instance-id", iid,
            "--attribute", "userData", "--value", base64.b64encode(b"third").decode())
    assert base64.b64decode(value(ec2, iid, "userData", "UserData")) == b"third"
    ec2.modify_instance_attribute(InstanceId=iid, UserData={"Value": b""})
    assert "Value" not in attr(ec2, iid, "userData")["UserData"]
    ec2.start_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "running")
    assert "user-data: third" not in console(ec2, iid)
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")
