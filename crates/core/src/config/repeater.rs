//! The udprepeater's settings ([`RepeaterSettings`]): where it receives
//! cache datagrams and subscriptions, its limits and rate, and uWSGI's own
//! subscription options it honours. Resolved apart from the session
//! cache's settings: an instance runs it with or without a session cache.

use std::net::SocketAddr;

use super::values::{err, positive, ConfigError};
use super::{addr, RawOptions};

/// The udprepeater's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepeaterSettings {
    /// `udprepeater`: where it receives cache datagrams.
    pub data: SocketAddr,
    /// `udprepeater-subscription-server`.
    pub subscription: SocketAddr,
    /// `udprepeater-stats`.
    pub stats: Option<SocketAddr>,
    /// uWSGI's `subscriptions-sign-check` (`ALGO:DIR`).
    pub sign_check: Option<String>,
    pub max_subscribers: usize,
    pub max_clusters: usize,
    /// uWSGI's `subscription-tolerance`, seconds.
    pub tolerance_secs: u64,
    /// `udprepeater-rate`: datagrams a second forwarded from one source IP.
    pub per_source_per_sec: u64,
}

/// uWSGI's default `subscription-tolerance`.
pub const SUBSCRIPTION_TOLERANCE_SECS: u64 = 17;

/// Resolves the udprepeater's options; `Ok(None)` without `udprepeater`.
pub fn repeater(raw: &RawOptions) -> Result<Option<RepeaterSettings>, ConfigError> {
    let Some(data) = &raw.udprepeater else {
        for (name, given) in [
            ("udprepeater-subscription-server", &raw.udprepeater_subscription_server),
            ("udprepeater-stats", &raw.udprepeater_stats),
            ("udprepeater-max-subscribers", &raw.udprepeater_max_subscribers),
            ("udprepeater-max-clusters", &raw.udprepeater_max_clusters),
            ("udprepeater-rate", &raw.udprepeater_rate),
        ] {
            if given.is_some() {
                return err(format!("{name} is set but udprepeater is not: no repeater runs"));
            }
        }
        return Ok(None);
    };
    let data = addr::parse("udprepeater", data, true)?;
    let Some(subscription) = &raw.udprepeater_subscription_server else {
        return err(
            "udprepeater needs udprepeater-subscription-server = IP:PORT: the nodes subscribe there \
             (subscribe2 = server=IP:PORT,key=CLUSTER,addr=NODE_UDP_ADDRESS)",
        );
    };
    let subscription = addr::parse("udprepeater-subscription-server", subscription, true)?;
    if subscription == data {
        return err("udprepeater-subscription-server must differ from udprepeater: subscriptions are not forwarded");
    }
    let stats = raw
        .udprepeater_stats
        .as_deref()
        .map(|v| addr::parse("udprepeater-stats", v, true))
        .transpose()?;
    let number = |name: &str, value: &Option<String>, default: u64, max: u64| match value {
        Some(v) => positive(name, v, max),
        None => Ok(default),
    };
    let sign_check = match raw.subscriptions_sign_check.as_deref().map(str::trim) {
        Some("") => return err("subscriptions-sign-check needs ALGO:DIR (for example sha256:/etc/uwsgi/keys)"),
        other => other.map(str::to_string),
    };
    Ok(Some(RepeaterSettings {
        data,
        subscription,
        stats,
        sign_check,
        max_subscribers: number(
            "udprepeater-max-subscribers",
            &raw.udprepeater_max_subscribers,
            64,
            4096,
        )? as usize,
        max_clusters: number("udprepeater-max-clusters", &raw.udprepeater_max_clusters, 64, 4096)? as usize,
        tolerance_secs: number(
            "subscription-tolerance",
            &raw.subscription_tolerance,
            SUBSCRIPTION_TOLERANCE_SECS,
            86_400,
        )?,
        per_source_per_sec: number("udprepeater-rate", &raw.udprepeater_rate, 100_000, 100_000_000)?,
    }))
}
