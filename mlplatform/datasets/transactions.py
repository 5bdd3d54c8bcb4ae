"""Seeded generator of realistic card transactions with fraud labels.

Each user has habits (home country, usual devices, typical spend and its spread, active hours,
how often they buy). Legitimate transactions follow those habits; fraudulent ones (about 2 %)
break them in learnable but overlapping ways: an amount far above the user's usual, night-time
activity, a foreign country, a device the user never used, a risky merchant category, or a burst
of tiny "card-testing" charges. No single signal gives fraud away, so models must combine them.

Example:
    >>> from mlplatform.datasets import make_transactions
    >>> df = make_transactions(10_000, seed=7)
    >>> sorted(df.columns) == sorted(TRANSACTION_COLUMNS)
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

TRANSACTION_COLUMNS = [
    "transaction_id", "user_id", "merchant_id", "event_timestamp", "amount",
    "merchant_category", "country", "device_type", "is_fraud",
]

#: Merchant categories with (share of legit spend, share of fraud, amount multiplier).
CATEGORIES: dict[str, tuple[float, float, float]] = {
    "grocery": (0.22, 0.03, 0.8),
    "restaurants": (0.17, 0.03, 0.7),
    "gas": (0.10, 0.04, 0.9),
    "retail": (0.14, 0.08, 1.2),
    "online_retail": (0.14, 0.16, 1.1),
    "travel": (0.04, 0.06, 3.0),
    "entertainment": (0.07, 0.04, 0.8),
    "electronics": (0.05, 0.16, 2.5),
    "jewelry": (0.01, 0.09, 3.0),
    "gift_cards": (0.02, 0.13, 1.5),
    "gaming": (0.03, 0.08, 0.6),
    "crypto": (0.01, 0.10, 2.5),
}
#: Countries with (share of users living there, weight as a fraud origin).
COUNTRIES: dict[str, tuple[float, float]] = {
    "US": (0.45, 0.10), "GB": (0.12, 0.05), "DE": (0.10, 0.04), "FR": (0.08, 0.04),
    "CA": (0.08, 0.03), "ES": (0.05, 0.04), "IT": (0.04, 0.03), "NL": (0.03, 0.03),
    "BR": (0.03, 0.12), "MX": (0.02, 0.10), "IN": (0.0, 0.10), "NG": (0.0, 0.14),
    "RU": (0.0, 0.10), "CN": (0.0, 0.08),
}
#: Where the platform keeps raw transactions, under ``storage_root``.
RAW_DIR = ("raw", "transactions")

DEVICE_TYPES = ["mobile_ios", "mobile_android", "desktop", "tablet"]
_DEVICE_P = np.array([0.40, 0.35, 0.20, 0.05])

#: What ``drift=`` can shift, and what the number means.
DRIFT_KEYS: dict[str, str] = {
    "amount": "log-shift of every amount: amounts are multiplied by exp(value)",
    "country": "share (0-1) of legitimate transactions moved to a country abroad",
    "device_type": "share (0-1) of legitimate transactions made on a device the user never used",
    "merchant_category": "share (0-1) of transactions re-assigned to online_retail/gaming",
    "hour": "share (0-1) of transactions moved to night time (00:00-05:59 UTC)",
    "fraud_rate": "multiplier (>0) of the fraud prevalence",
}
_SHARE_KEYS = {"country", "device_type", "merchant_category", "hour"}
_BASE_FRAUD_RATE = 0.019
_DIURNAL = np.array([1, 0.6, 0.4, 0.3, 0.3, 0.5, 1.5, 3, 4, 5, 5.5, 6,
                     7, 6.5, 6, 6, 6.5, 7, 7.5, 7, 6, 4.5, 3, 2], dtype=float)


def make_transactions(
    n_rows: int,
    n_users: int | None = None,
    n_merchants: int | None = None,
    start: str | pd.Timestamp = "2026-01-01",
    days: int = 60,
    seed: int = 0,
    drift: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Generate ``n_rows`` card transactions sorted by time.

    Args:
        n_rows: Number of transactions (>= 1).
        n_users: Number of card holders; default ``max(50, n_rows // 40)`` (~40 purchases each).
        n_merchants: Number of merchants; default ``max(30, n_rows // 200)``.
        start: First day of the period (UTC).
        days: Length of the period in days.
        seed: Random seed; the same arguments and seed give identical data.
        drift: Named distribution shifts, e.g. ``{"amount": 0.7, "country": 0.2}``;
            see :data:`DRIFT_KEYS` for the names and what each value means.

    Returns:
        DataFrame with columns :data:`TRANSACTION_COLUMNS`; ``event_timestamp`` is tz-aware UTC,
        ``is_fraud`` is 0/1.

    Raises:
        ValueError: ``n_rows``/``n_users``/``n_merchants``/``days`` not positive, or an unknown
            or out-of-range drift key.
    """
    drift = _check_args(n_rows, n_users, n_merchants, days, drift)
    n_users = n_users or max(50, n_rows // 40)
    n_merchants = n_merchants or max(30, n_rows // 200)
    rng = np.random.default_rng(seed)
    cat_names = list(CATEGORIES)
    legit_cat_p = _norm([v[0] for v in CATEGORIES.values()])
    fraud_cat_p = _norm([v[1] for v in CATEGORIES.values()])
    cat_mult = np.array([v[2] for v in CATEGORIES.values()])
    country_names = np.array(list(COUNTRIES))
    home_p = _norm([v[0] for v in COUNTRIES.values()])
    fraud_country_p = _norm([v[1] for v in COUNTRIES.values()])

    # Users and their habits.
    u_home = rng.choice(len(country_names), n_users, p=home_p)
    u_mu = rng.normal(3.4, 0.6, n_users)            # typical log-amount (e^3.4 ~ $30)
    u_sigma = rng.uniform(0.3, 0.7, n_users)
    u_dev1 = rng.choice(len(DEVICE_TYPES), n_users, p=_DEVICE_P)
    u_dev2 = np.where(rng.random(n_users) < 0.5, (u_dev1 + rng.integers(1, 4, n_users)) % 4, u_dev1)
    u_activity = rng.lognormal(0.0, 1.0, n_users)
    u_night_owl = rng.random(n_users) < 0.08

    # Merchants: each sells in one category.
    m_cat = np.concatenate([np.arange(len(cat_names)),
                            rng.choice(len(cat_names), max(0, n_merchants - len(cat_names)),
                                       p=legit_cat_p)])[:n_merchants]
    by_cat = [np.flatnonzero(m_cat == c) for c in range(len(cat_names))]

    # Transactions.
    user = rng.choice(n_users, n_rows, p=u_activity / u_activity.sum())
    fraud_rate = min(0.5, _BASE_FRAUD_RATE * drift.get("fraud_rate", 1.0))
    fraud = rng.random(n_rows) < fraud_rate
    n_fraud = int(fraud.sum())

    cat = rng.choice(len(cat_names), n_rows, p=legit_cat_p)
    cat[fraud] = rng.choice(len(cat_names), n_fraud, p=fraud_cat_p)
    card_testing = fraud & (rng.random(n_rows) < 0.15)

    hour = rng.choice(24, n_rows, p=_norm(_DIURNAL))
    owl = u_night_owl[user] & (rng.random(n_rows) < 0.5)
    hour[owl] = rng.integers(0, 6, int(owl.sum()))
    night_fraud = fraud & (rng.random(n_rows) < 0.45)
    hour[night_fraud] = rng.integers(0, 6, int(night_fraud.sum()))

    country = u_home[user].copy()
    travel = ~fraud & (rng.random(n_rows) < 0.04)
    country[travel] = rng.choice(len(country_names), int(travel.sum()), p=home_p)
    abroad_fraud = fraud & (rng.random(n_rows) < 0.55)
    country[abroad_fraud] = rng.choice(len(country_names), int(abroad_fraud.sum()), p=fraud_country_p)

    device = np.where(rng.random(n_rows) < 0.8, u_dev1[user], u_dev2[user])
    odd = rng.random(n_rows) < 0.03
    new_dev_fraud = fraud & (rng.random(n_rows) < 0.6)
    switch = odd | new_dev_fraud
    device[switch] = (u_dev1[user][switch] + rng.integers(1, 4, int(switch.sum()))) % 4

    log_amount = rng.normal(u_mu[user], u_sigma[user]) + np.log(cat_mult[cat])
    big = fraud & ~card_testing & (rng.random(n_rows) < 0.65)
    log_amount[big] += rng.uniform(1.0, 2.5, int(big.sum()))
    amount = np.exp(log_amount)
    amount[card_testing] = rng.uniform(0.5, 4.0, int(card_testing.sum()))

    day = rng.integers(0, days, n_rows)
    seconds = rng.integers(0, 3600, n_rows)

    # Drift: applied after the habits so the named columns move and the rest stays put.
    if "amount" in drift:
        amount = amount * np.exp(drift["amount"])
    if "country" in drift:
        moved = ~fraud & (rng.random(n_rows) < drift["country"])
        country[moved] = (u_home[user][moved] + rng.integers(1, len(country_names), int(moved.sum()))
                          ) % len(country_names)
    if "device_type" in drift:
        moved = ~fraud & (rng.random(n_rows) < drift["device_type"])
        device[moved] = (u_dev1[user][moved] + rng.integers(1, 4, int(moved.sum()))) % 4
    if "merchant_category" in drift:
        moved = rng.random(n_rows) < drift["merchant_category"]
        targets = np.array([cat_names.index("online_retail"), cat_names.index("gaming")])
        cat[moved] = rng.choice(targets, int(moved.sum()))
    if "hour" in drift:
        moved = rng.random(n_rows) < drift["hour"]
        hour[moved] = rng.integers(0, 6, int(moved.sum()))

    merchant = np.empty(n_rows, dtype=np.int64)
    for c, members in enumerate(by_cat):
        rows = np.flatnonzero(cat == c)
        if len(rows):
            pool = members if len(members) else np.arange(n_merchants)
            merchant[rows] = rng.choice(pool, len(rows))

    ts = (pd.Timestamp(start, tz="UTC")
          + pd.to_timedelta(day, unit="D") + pd.to_timedelta(hour, unit="h")
          + pd.to_timedelta(seconds, unit="s"))
    df = pd.DataFrame({
        "user_id": np.char.add("u", np.char.zfill(user.astype(str), 6)),
        "merchant_id": np.char.add("m", np.char.zfill(merchant.astype(str), 5)),
        "event_timestamp": ts,
        "amount": np.round(np.maximum(amount, 0.5), 2),
        "merchant_category": np.array(cat_names)[cat],
        "country": country_names[country],
        "device_type": np.array(DEVICE_TYPES)[device],
        "is_fraud": fraud.astype(np.int64),
    })
    df = df.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    df.insert(0, "transaction_id", [f"tx-{seed}-{i:09d}" for i in range(n_rows)])
    for col in ("user_id", "merchant_id", "merchant_category", "country", "device_type"):
        df[col] = df[col].astype(str)
    df["event_timestamp"] = df["event_timestamp"].astype("datetime64[us, UTC]")
    return df[TRANSACTION_COLUMNS]


def save_transactions(df: pd.DataFrame, folder: str | Path, n_files: int = 4) -> Path:
    """Write transactions as ``n_files`` Parquet files (so Ray Data reads them in parallel).

    The folder is replaced atomically: a failure leaves the previous data untouched.

    Returns:
        The folder holding the Parquet files.
    """
    from mlplatform._fs import atomic_dir

    with atomic_dir(folder) as tmp:
        for i, part in enumerate(np.array_split(np.arange(len(df)), max(1, n_files))):
            if len(part):
                df.iloc[part].to_parquet(tmp / f"part-{i:05d}.parquet", index=False)
    return Path(folder)


def write_transactions(path: str | Path, rows: int, seed: int = 0) -> Path:
    """Generate ``rows`` transactions and write them as Parquet under ``path``: a project's
    ``data.generate.function`` (``mlplatform.datasets:write_transactions``)."""
    return save_transactions(make_transactions(rows, seed=seed), path)


def _check_args(n_rows, n_users, n_merchants, days, drift) -> dict[str, float]:
    for name, value in (("n_rows", n_rows), ("n_users", n_users),
                        ("n_merchants", n_merchants), ("days", days)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    drift = dict(drift or {})
    for key, value in drift.items():
        if key not in DRIFT_KEYS:
            raise ValueError(f"unknown drift key {key!r}; allowed: "
                             + "; ".join(f"{k} ({v})" for k, v in DRIFT_KEYS.items()))
        if not isinstance(value, (int, float)) or not np.isfinite(value):
            raise ValueError(f"drift[{key!r}] must be a finite number, got {value!r}")
        if key in _SHARE_KEYS and not 0.0 <= value <= 1.0:
            raise ValueError(f"drift[{key!r}] is a share and must be within [0, 1], got {value}")
        if key == "fraud_rate" and value <= 0:
            raise ValueError(f"drift['fraud_rate'] is a multiplier and must be > 0, got {value}")
    return {k: float(v) for k, v in drift.items()}


def _norm(weights) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    return w / w.sum()
