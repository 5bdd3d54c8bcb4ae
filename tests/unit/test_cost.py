"""Cost accounting without Ray: price tables, usage arithmetic, durations, summaries; and the
argument checks of ``mlp submit`` (which fail before any cluster is contacted)."""

from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from mlplatform.cluster.cost import (
    PriceTable,
    Usage,
    cost_fields,
    estimate,
    load_price_table,
    price_table_for,
    scaling_usage,
    trials_usage,
)
from mlplatform.cluster.cost_summary import CostRecord, format_table, parse_since, summarize
from mlplatform.cluster.submit import dashboard_address, find_token, plan
from mlplatform.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2025, 6, 10, 12, 0, tzinfo=timezone.utc)


# ----------------------------------------------------------------------- price tables -------
def test_builtin_table_prices_known_types_families_and_default():
    prices = PriceTable.default()
    assert prices.cpu_hour == 0.048 and prices.source == "built-in"
    assert prices.gpu_price("A10G") == 1.006 and prices.gpu_price("a10g") == 1.006
    assert prices.gpu_price("A100-80G") == 3.67          # family fallback
    assert prices.gpu_price("unknown") == prices.gpu_price("B200") == 1.0


def test_price_table_from_yaml_file_and_prices_key(tmp_path):
    flat = tmp_path / "prices.yaml"
    flat.write_text("cpu_hour: 0.05\ngpu_hour: {L4: 0.7}\n")
    table = load_price_table(flat)
    assert table.cpu_hour == 0.05 and table.gpu_price("L4") == 0.7
    assert table.gpu_price("T4") == 1.0 and table.source == str(flat)   # default added
    nested = tmp_path / "cluster.yaml"
    nested.write_text("prices:\n  cpu_hour: 0.04\n  gpu_hour: 2.5\n")   # one price for all
    assert load_price_table(nested).gpu_price("H100") == 2.5


@pytest.mark.parametrize("text, fragment", [
    ("gpu_hour: {A10G: 1.0}\n", "cpu_hour (price per CPU-hour) is missing"),
    ("cpu_hour: 0.05\ncpu_hours: 1\n", "unknown key(s) ['cpu_hours']"),
    ("cpu_hour: -1\n", "cpu_hour must be a number >= 0"),
    ("cpu_hour: 0.05\ngpu_hour: {A10G: cheap}\n", "gpu_hour.A10G must be a number"),
    ("cpu_hour: 0.05\ngpu_hour: [1, 2]\n", "gpu_hour must map accelerator types"),
    ("- 1\n- 2\n", "must be a mapping"),
    ("cpu_hour: [unclosed\n", "not valid YAML"),
])
def test_bad_price_tables_name_the_file_and_the_key(tmp_path, text, fragment):
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_price_table(path)
    assert fragment in str(err.value) and str(path) in str(err.value)


def test_price_table_source_order(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("cpu_hour: 0.1\n")
    assert price_table_for(None, env={}).source == "built-in"
    assert price_table_for(None, env={"MLP_PRICE_TABLE": str(path)}).cpu_hour == 0.1
    platform = SimpleNamespace(price_table=path)          # a PlatformConfig field wins
    assert price_table_for(platform, env={"MLP_PRICE_TABLE": "/nope.yaml"}).cpu_hour == 0.1
    with pytest.raises(ConfigError, match="does not exist"):
        price_table_for(None, env={"MLP_PRICE_TABLE": str(tmp_path / "missing.yaml")})


# ------------------------------------------------------------------------------ usage -------
def test_scaling_usage_is_workers_times_resources_times_wall():
    u = scaling_usage({"CPU": 2}, num_workers=3, use_gpu=False, wall_s=1800)
    assert (u.cpus, u.gpus, u.gpu_type, u.method) == (6, 0, "none", "scaling")
    assert u.cpu_hours == pytest.approx(3.0) and u.gpu_hours == 0
    assert estimate(u, PriceTable.default()) == pytest.approx(3.0 * 0.048)


def test_use_gpu_adds_one_gpu_per_worker_and_reads_the_accelerator_resource():
    u = scaling_usage({"CPU": 4, "accelerator_type:L4": 0.001}, 2, True, 3600)
    assert (u.gpus, u.gpu_type) == (2, "L4") and u.gpu_hours == pytest.approx(2.0)
    assert estimate(u, PriceTable.default()) == pytest.approx(8 * 0.048 + 2 * 0.805)
    two_each = scaling_usage({"CPU": 8, "GPU": 2}, 1, True, 3600, gpu_type="A100")
    assert two_each.gpu_hours == pytest.approx(2.0) and two_each.gpu_type == "A100"
    # no Ray connected, no configured type: the type is unknown and priced at the default
    unknown = scaling_usage({"CPU": 1}, 1, True, 3600)
    assert unknown.gpu_type == "unknown"
    assert estimate(unknown, PriceTable.default()) == pytest.approx(0.048 + 1.0)


def test_trials_usage_sums_each_trials_time_and_skips_missing_ones():
    u = trials_usage({"CPU": 1}, False, [600.0, 1200.0, float("nan"), None], wall_s=900)
    assert u.cpu_hours == pytest.approx(0.5) and u.wall_s == 900 and u.method == "trials"


def test_cost_fields_are_prefixed_and_tag_the_job_and_model():
    u = Usage(wall_s=7200, cpu_s=4 * 7200, gpu_s=7200, gpu_type="A10G", cpus=4, gpus=1)
    metrics, params, tags = cost_fields(u, PriceTable.default(), "train", "fraud")
    assert metrics == pytest.approx({"cost.wall_s": 7200, "cost.cpu_hours": 8.0,
                                     "cost.gpu_hours": 2.0, "cost.gpu_hours.A10G": 2.0,
                                     "cost.usd_estimate": 8 * 0.048 + 2 * 1.006})
    assert params == {"cost.cpus": "4", "cost.gpus": "1", "cost.price.cpu_hour": "0.048",
                      "cost.price.gpu_hour": "1.006"}
    assert tags["cost.gpu_type"] == "A10G" and tags["mlplatform.job"] == "train"
    assert tags["mlplatform.model"] == "fraud" and tags["cost.price_table"] == "built-in"
    _, _, no_model = cost_fields(u, PriceTable.default(), "build_features")
    assert "mlplatform.model" not in no_model


# ------------------------------------------------------- whole jobs, measured GPU types -------
def test_a_jobs_usage_is_its_steps_added_up_with_gpu_types_kept_apart():
    from mlplatform.cluster.job_usage import combine

    prep = Usage(wall_s=600, cpu_s=1800, method="ray_tasks")
    train = scaling_usage({"CPU": 4}, 2, True, 3600, gpu_type="L4")
    job = combine({"prep": prep, "train": train}, wall_s=4300)
    assert (job.wall_s, job.method, job.gpu_type, job.cpus, job.gpus) == (
        4300, "ray_tasks+scaling", "L4", 8, 2)
    assert job.cpu_hours == pytest.approx(0.5 + 8) and job.gpu_hours == pytest.approx(2)
    metrics, params, tags = cost_fields(job, PriceTable.default(), "train", "fraud")
    assert metrics["cost.usd_estimate"] == pytest.approx(8.5 * 0.048 + 2 * 0.805)
    assert metrics["cost.prep.cpu_hours"] == pytest.approx(0.5)
    assert metrics["cost.train.wall_s"] == 3600 and metrics["cost.prep.wall_s"] == 600
    assert metrics["cost.train.gpu_hours"] == pytest.approx(2)
    assert params["cost.price.gpu_hour"] == "0.805" and tags["cost.method"] == "ray_tasks+scaling"


def test_gpus_of_several_types_are_priced_and_summed_per_type():
    from dataclasses import replace

    from mlplatform.cluster.job_usage import combine

    a100 = scaling_usage({"CPU": 1}, 1, True, 3600, gpu_type="A100")
    l4 = scaling_usage({"CPU": 1}, 2, True, 3600, gpu_type="L4")
    both = combine({"a": a100, "b": l4}, 3600)
    assert both.gpu_type == "A100+L4" and both.gpu_seconds_by_type() == {"A100": 3600,
                                                                          "L4": 7200}
    prices = PriceTable.default()
    assert estimate(both, prices) == pytest.approx(3 * 0.048 + 3.67 + 2 * 0.805)
    metrics, params, _ = cost_fields(both, prices, "train")
    assert metrics["cost.gpu_hours.A100"] == pytest.approx(1)
    assert metrics["cost.gpu_hours.L4"] == pytest.approx(2)
    assert params["cost.price.gpu_hour.A100"] == "3.67" and "cost.price.gpu_hour" not in params
    # `mlp cost` puts each type's hours in its own column, not under "A100+L4"
    run = SimpleNamespace(
        info=SimpleNamespace(run_id="r", start_time=int(NOW.timestamp() * 1000)),
        data=SimpleNamespace(metrics=metrics, tags={"cost.gpu_type": both.gpu_type}))
    _, total = summarize([CostRecord.from_run(run)], "job")
    assert total.gpu_hours == pytest.approx({"A100": 1.0, "L4": 2.0})
    assert replace(both, gpu_split=()).gpu_seconds_by_type() == {"A100+L4": 10800}


@pytest.fixture
def ray_state(monkeypatch):
    """What the state API says about this job's Train workers and the cluster's nodes."""
    from mlplatform.cluster import job_usage

    state = SimpleNamespace(workers={}, nodes={})
    monkeypatch.setattr(job_usage, "train_workers", lambda: dict(state.workers))
    monkeypatch.setattr(job_usage, "node_accelerators", lambda: dict(state.nodes))
    return state


def test_training_meter_prices_the_type_the_workers_ran_on(ray_state):
    from mlplatform.cluster.job_usage import TrainingMeter

    ray_state.workers = {"old": "n0"}                   # an earlier run of this driver
    ray_state.nodes = {"n0": "A100", "n1": "L4", "n2": "A100"}
    meter = TrainingMeter({"CPU": 4}, num_workers=2, use_gpu=True)
    with meter:
        ray_state.workers.update({"w1": "n1", "w2": "n1"})
    # the GPU node is gone by the time the cost is recorded (idle timeout): Ray no longer
    # says what it was, the meter noted it while it ran
    del ray_state.nodes["n1"]
    usage = meter.usage()
    assert usage.gpu_type == "L4" and usage.gpus == 2
    assert usage.gpu_s == pytest.approx(2 * meter.wall_s)
    # workers on two types (and a restarted group: the dead workers count too); a node never
    # seen advertising a type is `unknown`, priced at the default
    ray_state.workers.update({"w3": "n2", "w4": "never-seen"})
    mixed = meter.usage()
    assert mixed.gpu_type == "A100+L4+unknown"
    assert dict(mixed.gpu_split) == pytest.approx(
        {"A100": 0.5 * meter.wall_s, "L4": meter.wall_s, "unknown": 0.5 * meter.wall_s})


def test_training_meter_without_state_api_or_gpus(ray_state, monkeypatch):
    from mlplatform.cluster import job_usage
    from mlplatform.cluster.job_usage import TrainingMeter

    monkeypatch.setattr(job_usage, "train_workers", lambda: None)      # no answer
    with TrainingMeter({"CPU": 1}, 1, True) as meter:
        pass
    assert meter.usage().gpu_type == "unknown"                         # not a guess
    # the type asked for pins it: no state API needed
    with TrainingMeter({"CPU": 1, "accelerator_type:A100": 0.001}, 1, True) as pinned:
        pass
    assert pinned.usage().gpu_type == "A100"
    with TrainingMeter({"CPU": 2}, 3, False) as cpu_only:
        pass
    usage = cpu_only.usage()
    assert (usage.gpu_type, usage.gpu_s, usage.cpus) == ("none", 0, 6)


# ---------------------------------------------------------------------------- summary -------
@pytest.mark.parametrize("text, delta", [("7d", timedelta(days=7)), ("24h", timedelta(hours=24)),
                                         ("30m", timedelta(minutes=30)), (" 2w ", timedelta(weeks=2)),
                                         ("1.5h", timedelta(minutes=90)), ("45S", timedelta(seconds=45))])
def test_parse_since_durations(text, delta):
    assert parse_since(text, now=NOW) == NOW - delta


def test_parse_since_iso_dates_and_errors():
    assert parse_since("2025-06-01T00:00+00:00") == datetime(2025, 6, 1, tzinfo=timezone.utc)
    local = parse_since("2025-06-01")
    assert local.tzinfo is not None and local.replace(tzinfo=None) == datetime(2025, 6, 1)
    for bad in ("7 days", "yesterday", "7x", ""):
        with pytest.raises(ConfigError, match="7d, 24h, 30m"):
            parse_since(bad, now=NOW)


def _record(job, model, cpu_h, gpu_h=0.0, gpu_type="none", usd=None, wall_s=60.0):
    return CostRecord(f"run-{job}-{model}-{cpu_h}", job, model, NOW, wall_s, cpu_h, gpu_h,
                      gpu_type, cpu_h * 0.048 + gpu_h if usd is None else usd)


RECORDS = [_record("train", "fraud", 1.0), _record("train", "fraud", 2.0, 1.0, "A10G"),
           _record("tune", "fraud", 4.0), _record("train", "churn", 0.5, 0.5, "L4"),
           _record("build_features", "-", 0.25)]


def test_summarize_by_model_and_job_with_gpu_hours_by_type():
    by_model, total = summarize(RECORDS, "model")
    assert [s.key for s in by_model] == ["fraud", "churn", "-"]          # costliest first
    fraud = by_model[0]
    assert fraud.runs == 3 and fraud.cpu_hours == pytest.approx(7.0)
    assert fraud.gpu_hours == {"A10G": 1.0}
    assert total.runs == 5 and total.cpu_hours == pytest.approx(7.75)
    assert total.gpu_hours == {"A10G": 1.0, "L4": 0.5}
    assert total.usd == pytest.approx(7.75 * 0.048 + 1.5)
    by_job, total_job = summarize(RECORDS, "job")
    assert {s.key: s.runs for s in by_job} == {"train": 3, "tune": 1, "build_features": 1}
    assert total_job.usd == pytest.approx(total.usd)
    with pytest.raises(ConfigError, match="model or job"):
        summarize(RECORDS, "user")


def test_format_table_has_a_row_per_group_and_a_total():
    text = format_table(*summarize(RECORDS, "job"), "job")
    lines = text.splitlines()
    assert lines[0].split() == ["job", "runs", "wall", "h", "CPU-h", "GPU-h", "est.", "USD"]
    assert lines[-1].startswith("total") and " 5 " in lines[-1] and "7.7500" in lines[-1]
    assert any(line.startswith("train") and "A10G 1.0000, L4 0.5000" in line for line in lines)
    assert len(lines) == 3 + 3 + 1


def test_cost_record_from_an_mlflow_run():
    run = SimpleNamespace(
        info=SimpleNamespace(run_id="abc", start_time=int(NOW.timestamp() * 1000)),
        data=SimpleNamespace(metrics={"cost.cpu_hours": 2.0, "cost.usd_estimate": 0.1,
                                      "cost.wall_s": 3600.0},
                             tags={"mlplatform.job": "train", "mlplatform.model": "fraud"}))
    r = CostRecord.from_run(run)
    assert (r.job, r.model, r.cpu_hours, r.gpu_hours, r.gpu_type) == ("train", "fraud", 2.0,
                                                                      0.0, "none")
    assert r.start == NOW


# ---------------------------------------------------------------------- mlp submit args -------
def test_submit_plan_lists_valid_jobs_and_ships_the_project_relative(tmp_path):
    with pytest.raises(ConfigError) as err:
        plan("trian", REPO / "examples/fraud", REPO)
    assert "unknown job 'trian'" in str(err.value)
    for job in ("train", "tune", "build_features", "ci_pipeline"):
        assert job in str(err.value)
    with pytest.raises(ConfigError, match="no project at .*missing"):
        plan("train", tmp_path / "missing", REPO)
    entry, renv, warnings = plan("train", REPO / "examples/fraud", REPO,
                                 {"env_vars": {"A": "1"}}, {"B": "2"}, model="torch")
    assert entry == "python jobs/train.py --project examples/fraud --model torch"
    assert renv == {"working_dir": str(REPO), "env_vars": {"A": "1", "B": "2"}}
    assert warnings == []
    outside = tmp_path / "mine"
    outside.mkdir()
    (outside / "mlplatform.yaml").write_text("name: mine\n")
    entry, _, warnings = plan("train", outside, REPO)
    assert entry.endswith(f"--project {outside.resolve()}") and "outside" in warnings[0]


def test_find_token_follows_rays_order(tmp_path):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    assert find_token({"HOME": str(home)}) is None
    (home / ".ray" / "auth_token").write_text("from-home\n")
    assert find_token({"HOME": str(home)}) == "from-home"
    path = tmp_path / "tok"
    path.write_text("from-path")
    assert find_token({"HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(path)}) == "from-path"
    assert find_token({"HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(path),
                       "RAY_AUTH_TOKEN": "from-env"}) == "from-env"


def test_submit_address_order_is_what_the_help_says():
    from mlplatform.cli.jobs import AddressOpt

    both = {"RAY_API_SERVER_ADDRESS": "http://api:8265", "RAY_ADDRESS": "http://addr:8265"}
    assert dashboard_address(None, both) == "http://api:8265"
    assert dashboard_address(None, {"RAY_ADDRESS": "http://addr:8265"}) == "http://addr:8265"
    assert dashboard_address(None, {}) == "http://127.0.0.1:8265"
    assert dashboard_address("http://given:1", both) == "http://given:1"
    assert "$RAY_API_SERVER_ADDRESS, then $RAY_ADDRESS, then http://127.0.0.1:8265" in (
        AddressOpt.help)
