#!/usr/bin/env python3
"""Demo helper, against the EC2 emulator in AWS_ENDPOINT_URL.

  demo-seed.py seed REGION       creates tagged source snapshots of different sizes
  demo-seed.py copies REGION     lists the copies copy-snapshots made in REGION
"""
import sys

import boto3

SIZES_GIB = [8, 64, 250, 1024]


def ec2(region):
    return boto3.client("ec2", region_name=region)


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


def copies(region):
    found = ec2(region).describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": ["copy-snapshots:source-snapshot-id"]}]
    )["Snapshots"]
    for snapshot in sorted(found, key=lambda s: s["SnapshotId"]):
        tags = {t["Key"]: t["Value"] for t in snapshot.get("Tags", [])}
        print(
            f"  {snapshot['SnapshotId']}  {snapshot['State']:<9}  from {tags.get('copy-snapshots:source-snapshot-id')}"
            f" ({tags.get('copy-snapshots:source-region')})  Name={tags.get('Name', '-')}  \"{snapshot.get('Description', '')}\""
        )
    print(f"  {len(found)} copies in {region}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("seed", "copies"):
        sys.exit(__doc__)
    {"seed": seed, "copies": copies}[sys.argv[1]](sys.argv[2])
