//! `ssl-sessions-tickets` and `ssl-sessions-tickets-rotation`: cluster
//! tickets, whose keys derive from the cluster key.

use super::cache::{option_name, CacheDef};
use super::values::{err, positive, ConfigError};
use super::{RawOptions, Replication};

/// Cluster tickets (`ssl-sessions-tickets = cluster`): the default and
/// largest rotation interval, and the longest ticket lifetime (7 days, RFC
/// 8446 §4.6.1), seconds.
pub const DEFAULT_TICKET_ROTATION: u64 = 3600;
pub const MAX_TICKET_ROTATION: u64 = 604_800;
pub const MAX_TICKET_LIFETIME: u64 = 604_800;

/// Cluster tickets: ticket keys derived from the cluster key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tickets {
    /// Seconds between key rotations.
    pub rotation: u64,
    /// Seconds a ticket lives: `ssl-sessions-timeout`, at most 7 days.
    pub lifetime: u64,
}

/// `ssl-sessions-tickets` and its rotation: cluster tickets need the
/// cluster key.
pub(super) fn tickets(
    raw: &RawOptions,
    cache: &CacheDef,
    replication: &Replication,
    timeout: u32,
    warnings: &mut Vec<String>,
) -> Result<Option<Tickets>, ConfigError> {
    let on = match raw.tickets.as_deref().map(str::trim) {
        None | Some("off") => false,
        Some("cluster") => true,
        Some(v) => return err(format!("ssl-sessions-tickets = {v}: expected off or cluster")),
    };
    let rotation = match &raw.tickets_rotation {
        Some(v) => positive("ssl-sessions-tickets-rotation", v, MAX_TICKET_ROTATION)?,
        None => DEFAULT_TICKET_ROTATION,
    };
    if !on {
        if raw.tickets_rotation.is_some() {
            warnings.push(
                "ssl-sessions-tickets-rotation is set but ssl-sessions-tickets is not cluster: it changes nothing"
                    .to_string(),
            );
        }
        return Ok(None);
    }
    if replication.key_file.is_none() {
        return err(format!(
            "ssl-sessions-tickets = cluster needs a cluster key ({}): without one (plain mode) the nodes share \
             no secret to derive ticket keys from",
            option_name(cache, "cache-udp-key", "udp_key")
        ));
    }
    let lifetime = u64::from(timeout).min(MAX_TICKET_LIFETIME);
    if u64::from(timeout) > MAX_TICKET_LIFETIME {
        warnings.push(format!(
            "ssl-sessions-timeout = {timeout}: cluster tickets live at most {MAX_TICKET_LIFETIME} seconds (7 days, \
             RFC 8446)"
        ));
    }
    Ok(Some(Tickets { rotation, lifetime }))
}
