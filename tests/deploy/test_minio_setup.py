"""infra/compose/minio/create-lake-bucket.sh: the compose lake's bucket and the platform's bucket-scoped key.

No MinIO runs here, so the script runs under `sh` against a stand-in `mc` that keeps MinIO's state in a file
and answers as MinIO does where the script depends on it: `mb --ignore-existing` and `admin user add` are
upserts, `admin policy create` replaces the document, and `admin policy attach` fails when the user already
has the policy (minio/mc#4670), so a rerun only succeeds if the script checks before attaching.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT_USER, ROOT_PASSWORD = "medallion-admin", "root-password-for-tests"
BUCKET, ACCESS_KEY, SECRET_KEY = "medallion-lake", "medallion-lake", "lake-secret-for-tests"

FAKE_MC = """
import json, os, sys
from pathlib import Path

state_file = Path(os.environ["FAKE_MC_STATE"])
state = json.loads(state_file.read_text()) if state_file.exists() else {
    "aliases": {}, "buckets": [], "policies": {}, "users": {}, "calls": []
}
args = sys.argv[1:]
while args and args[0].startswith("--"):
    flag = args.pop(0)
    if flag == "--config-dir":
        args.pop(0)
state["calls"].append(args)


def done(code=0, error=None):
    state_file.write_text(json.dumps(state))
    if error:
        print("mc: <ERROR> " + error, file=sys.stderr)
    sys.exit(code)


def alias_of(name):
    if name.split("/")[0] not in state["aliases"]:
        done(1, f"alias {name} is not set")


match args:
    case ["alias", "set", alias, url, user, password]:
        if [user, password] != os.environ["FAKE_MC_ROOT"].split(":", 1):
            done(1, "Unable to initialize new alias. The request signature we calculated does not match.")
        state["aliases"][alias] = url
    case ["mb", "--ignore-existing", target]:
        alias_of(target)
        bucket = target.split("/", 1)[1]
        if bucket not in state["buckets"]:
            state["buckets"].append(bucket)
    case ["admin", "policy", "create", alias, name, document]:
        alias_of(alias)
        state["policies"][name] = json.loads(Path(document).read_text())
    case ["admin", "user", "add", alias, key, secret]:
        alias_of(alias)
        state["users"].setdefault(key, {"policies": []})["secret"] = secret
    case ["admin", "user", "info", alias, key, "--json"]:
        alias_of(alias)
        if key not in state["users"]:
            done(1, "The specified user does not exist.")
        user = state["users"][key]
        policies = ",".join(user["policies"])
        print(json.dumps({"status": "success", "accessKey": key, "policyName": policies}, indent=1))
    case ["admin", "policy", "attach", alias, name, "--user", key]:
        alias_of(alias)
        if name not in state["policies"]:
            done(1, f"policy {name} does not exist")
        user = state["users"][key]
        if name in user["policies"]:
            done(1, "Unable to make user/group policy association. The specified policy change is already in effect.")
        user["policies"].append(name)
    case _:
        done(2, f"the stand-in mc does not know {args}")
done()
"""


@pytest.fixture
def fake_mc(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mc = bin_dir / "mc"
    mc.write_text(f"#!{sys.executable}\n{FAKE_MC}")
    mc.chmod(mc.stat().st_mode | stat.S_IXUSR)
    return tmp_path / "minio-state.json"


def run_setup(repo_root: Path, state: Path, **overrides: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{state.parent / 'bin'}:/usr/bin:/bin",
        "TMPDIR": str(state.parent),
        "FAKE_MC_STATE": str(state),
        "FAKE_MC_ROOT": f"{ROOT_USER}:{ROOT_PASSWORD}",
        "MINIO_ENDPOINT": "http://minio:9000",
        "MINIO_ROOT_USER": ROOT_USER,
        "MINIO_ROOT_PASSWORD": ROOT_PASSWORD,
        "MINIO_LAKE_BUCKET": BUCKET,
        "MINIO_LAKE_ACCESS_KEY_ID": ACCESS_KEY,
        "MINIO_LAKE_SECRET_ACCESS_KEY": SECRET_KEY,
        **overrides,
    }
    script = repo_root / "infra" / "compose" / "minio" / "create-lake-bucket.sh"
    return subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60, check=False)


def minio(state: Path) -> dict[str, Any]:
    return json.loads(state.read_text()) if state.exists() else {"calls": []}


def test_creates_the_bucket_and_a_platform_key_limited_to_it(repo_root: Path, fake_mc: Path) -> None:
    result = run_setup(repo_root, fake_mc)
    assert result.returncode == 0, result.stderr
    state = minio(fake_mc)
    assert state["buckets"] == [BUCKET]
    assert state["users"] == {ACCESS_KEY: {"secret": SECRET_KEY, "policies": ["medallion-lake-readwrite"]}}
    [document] = state["policies"].values()
    bucket_arn = f"arn:aws:s3:::{BUCKET}"
    actions = set()
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow"
        assert set(statement["Resource"]) <= {bucket_arn, f"{bucket_arn}/*"}, statement
        actions |= set(statement["Action"])
    # What Delta commits and put-if-absent landing need, and no administration of the bucket.
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"} <= actions
    assert not [a for a in actions if "*" in a or a.startswith(("s3:PutBucket", "s3:DeleteBucket", "admin:"))]
    # Neither the root password nor the platform's secret is printed.
    for secret in (ROOT_PASSWORD, SECRET_KEY):
        assert secret not in result.stdout + result.stderr


def test_a_rerun_keeps_everything_and_resets_the_secret_to_the_env_value(repo_root: Path, fake_mc: Path) -> None:
    assert run_setup(repo_root, fake_mc).returncode == 0
    rotated = "rotated-lake-secret"
    again = run_setup(repo_root, fake_mc, MINIO_LAKE_SECRET_ACCESS_KEY=rotated)
    assert again.returncode == 0, again.stderr
    state = minio(fake_mc)
    assert state["buckets"] == [BUCKET]
    assert state["users"][ACCESS_KEY] == {"secret": rotated, "policies": ["medallion-lake-readwrite"]}
    # The second run looked before attaching, as it must with MinIO.
    attaches = [c for c in state["calls"] if c[:3] == ["admin", "policy", "attach"]]
    assert len(attaches) == 1


def test_the_stand_in_refuses_a_second_attach_as_minio_does(repo_root: Path, fake_mc: Path) -> None:
    assert run_setup(repo_root, fake_mc).returncode == 0
    mc = fake_mc.parent / "bin" / "mc"
    env = {**os.environ, "FAKE_MC_STATE": str(fake_mc), "FAKE_MC_ROOT": f"{ROOT_USER}:{ROOT_PASSWORD}"}
    attach = [str(mc), "admin", "policy", "attach", "lake", "medallion-lake-readwrite", "--user", ACCESS_KEY]
    result = subprocess.run(attach, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and "already in effect" in result.stderr


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"MINIO_LAKE_BUCKET": "Medallion_Lake"}, "MINIO_LAKE_BUCKET"),
        ({"MINIO_LAKE_BUCKET": "-lake"}, "MINIO_LAKE_BUCKET"),
        ({"MINIO_LAKE_BUCKET": "ab"}, "MINIO_LAKE_BUCKET"),
        ({"MINIO_LAKE_SECRET_ACCESS_KEY": "short"}, "MINIO_LAKE_SECRET_ACCESS_KEY"),
        ({"MINIO_LAKE_ACCESS_KEY_ID": ROOT_USER}, "MINIO_LAKE_ACCESS_KEY_ID"),
        ({"MINIO_LAKE_ACCESS_KEY_ID": ""}, "MINIO_LAKE_ACCESS_KEY_ID"),
        ({"MINIO_ROOT_PASSWORD": ""}, "MINIO_ROOT_PASSWORD"),
    ],
)
def test_bad_settings_are_refused_before_minio_is_touched(
    repo_root: Path, fake_mc: Path, overrides: dict[str, str], named: str
) -> None:
    result = run_setup(repo_root, fake_mc, **overrides)
    assert result.returncode != 0
    assert named in result.stderr
    assert minio(fake_mc)["calls"] == []


def test_wrong_root_credentials_stop_the_setup(repo_root: Path, fake_mc: Path) -> None:
    result = run_setup(repo_root, fake_mc, MINIO_ROOT_PASSWORD="not-the-root-password")
    assert result.returncode != 0
    assert minio(fake_mc)["buckets"] == []


def test_compose_gives_the_setup_every_variable_it_requires(repo_root: Path) -> None:
    script = (repo_root / "infra" / "compose" / "minio" / "create-lake-bucket.sh").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", script))
    assert {"MINIO_ENDPOINT", "MINIO_LAKE_BUCKET", "MINIO_LAKE_SECRET_ACCESS_KEY"} <= required
    setup = yaml.safe_load((repo_root / "docker-compose.yml").read_text())["services"]["minio-setup"]
    assert sorted(required - set(setup["environment"])) == []
