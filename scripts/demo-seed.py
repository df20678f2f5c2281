#!/usr/bin/env python3
"""Demo helper, against the EC2 emulator in AWS_ENDPOINT_URL.

  demo-seed.py seed REGION       creates tagged source snapshots of different sizes
  demo-seed.py copies REGION [ROLE_ARN]
                                 lists the copies copy-snapshots made in REGION (of the account
                                 ROLE_ARN is in, through sts:AssumeRole, when given)
  demo-seed.py shares REGION     lists this account's snapshots in REGION shared with another
"""
import sys

import boto3

SIZES_GIB = [8, 64, 250, 1024]


def ec2(region, role_arn=None):
    if role_arn is None:
        return boto3.client("ec2", region_name=region)
    assumed = boto3.client("sts", region_name=region).assume_role(RoleArn=role_arn, RoleSessionName="demo")
    credentials = assumed["Credentials"]
    return boto3.client(
        "ec2", region_name=region, aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"], aws_session_token=credentials["SessionToken"],
    )


def seed(region):
    client = ec2(region)
    for size in SIZES_GIB:
        volume = client.create_volume(AvailabilityZone=f"{region}a", Size=size)
        snapshot = client.create_snapshot(
            VolumeId=volume["VolumeId"],
            Description=f"demo source, {size} GiB",
            TagSpecifications=[{
                "ResourceType": "snapshot",
                "Tags": [{"Key": "Backup", "Value": "daily"}, {"Key": "Name", "Value": f"demo-{size}gib"}],
            }],
        )
        print(f"  {snapshot['SnapshotId']}  {size:>5} GiB  Backup=daily")
    # One the tag filter must not pick.
    volume = client.create_volume(AvailabilityZone=f"{region}a", Size=16)
    snapshot = client.create_snapshot(VolumeId=volume["VolumeId"], Description="demo, untagged")
    print(f"  {snapshot['SnapshotId']}     16 GiB  (untagged: not copied)")


def copies(region, role_arn=None):
    found = ec2(region, role_arn).describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": ["copy-snapshots:source-snapshot-id"]}]
    )["Snapshots"]
    for snapshot in sorted(found, key=lambda s: s["SnapshotId"]):
        tags = {t["Key"]: t["Value"] for t in snapshot.get("Tags", [])}
        print(
            f"  {snapshot['SnapshotId']}  {snapshot['State']:<9}  from {tags.get('copy-snapshots:source-snapshot-id')}"
            f" ({tags.get('copy-snapshots:source-region')})  Name={tags.get('Name', '-')}  \"{snapshot.get('Description', '')}\""
        )
    whose = f" of account {role_arn.split(':')[4]}" if role_arn else ""
    print(f"  {len(found)} copies in {region}{whose}")


def shares(region):
    client = ec2(region)
    shared = 0
    for snapshot in client.describe_snapshots(OwnerIds=["self"])["Snapshots"]:
        attribute = client.describe_snapshot_attribute(SnapshotId=snapshot["SnapshotId"], Attribute="createVolumePermission")
        accounts = [p.get("UserId", p.get("Group")) for p in attribute["CreateVolumePermissions"]]
        if accounts:
            shared += 1
            print(f"  {snapshot['SnapshotId']} shared with {', '.join(accounts)}")
    print(f"  {shared} snapshots in {region} shared with another account")


if __name__ == "__main__":
    commands = {"seed": seed, "copies": copies, "shares": shares}
    if len(sys.argv) not in (3, 4) or sys.argv[1] not in commands or (len(sys.argv) == 4 and sys.argv[1] != "copies"):
        sys.exit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
