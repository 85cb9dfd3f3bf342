//! Decoding of every killmail shape kmflow accepts into a [`Killmail`].
//!
//! Accepted shapes (detected by their top-level keys, not configured):
//! - a plain ESI killmail (`killmail_id`, `killmail_time`, `victim`, `attackers`, ...), as in
//!   EVE Ref archives;
//! - an ESI killmail with an embedded `zkb` object (zKillboard API responses);
//! - an R2Z2 object `{killmail_id, hash, esi: {...}, zkb: {...}, sequence_id, ...}`;
//! - a RedisQ object `{"package": {killID, killmail: {...}, zkb: {...}}}`.
//!
//! Anything else is a [`DecodeError`] with a bounded [`DecodeError::reason`] for metrics.

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::model::{Attacker, Killmail, Victim, Zkb, CENTS_PER_ISK};
use crate::time::parse_rfc3339;

/// Payloads larger than this are rejected without parsing (the largest real killmail, 982
/// attackers, is about 250 KiB).
pub const MAX_PAYLOAD_BYTES: usize = 8 * 1024 * 1024;
/// More attackers than this is not a killmail (the record is 3,000-odd in real fights).
pub const MAX_ATTACKERS: usize = 20_000;
/// Killmails before EVE's launch or after 2100 are rejected as absurd.
const MIN_TIME: i64 = 1_041_379_200; // 2003-01-01
const MAX_TIME: i64 = 4_102_444_800; // 2100-01-01
/// ISK values above a quadrillion are absurd (the most expensive kill ever is ~10^12).
const MAX_ISK: f64 = 1e15;
/// Damage above 10^11 on one killmail is absurd (a Keepstar has a few 10^8 hit points). With
/// at most [`MAX_ATTACKERS`] attackers, one killmail adds at most 2·10^15 to a sum, so no
/// realistic history comes near `i64::MAX` (9.2·10^18); the sums saturate beyond it.
pub const MAX_DAMAGE: u64 = 100_000_000_000;
/// The largest id (killmail, character, corporation, alliance, type, system) accepted: what
/// the API accepts in a path, so every stored id can be asked for.
pub const MAX_ID: u64 = i64::MAX as u64;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty payload")]
    Empty,
    #[error("payload of {0} bytes exceeds the limit of {MAX_PAYLOAD_BYTES} bytes")]
    TooLarge(usize),
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("unexpected JSON types: {0}")]
    Schema(String),
    #[error("not a killmail: no killmail_id")]
    MissingKillmailId,
    #[error("killmail_id must be positive")]
    InvalidKillmailId,
    #[error("killmail {0}: no killmail_time")]
    MissingTime(u64),
    #[error("killmail {0}: killmail_time {1:?} is not an RFC 3339 UTC time between 2003 and 2100")]
    BadTime(u64, String),
    #[error("killmail {0}: no victim")]
    MissingVictim(u64),
    #[error("killmail {0}: no solar_system_id")]
    MissingSystem(u64),
    #[error("killmail {0}: {1} attackers exceeds the limit of {MAX_ATTACKERS}")]
    TooManyAttackers(u64, usize),
    #[error("killmail {0}: envelope says killmail {1}")]
    IdMismatch(u64, u64),
    #[error("killmail {0}: invalid zkb: {1}")]
    InvalidZkb(u64, String),
    #[error("killmail {0}: {1} = {2} is out of range (at most {3})")]
    OutOfRange(u64, &'static str, u64, u64),
}

impl DecodeError {
    /// A short label with bounded cardinality, for the decode-failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::TooLarge(_) => "too_large",
            DecodeError::MalformedJson(_) => "malformed_json",
            DecodeError::Schema(_) => "schema",
            DecodeError::MissingKillmailId => "missing_killmail_id",
            DecodeError::InvalidKillmailId => "invalid_killmail_id",
            DecodeError::MissingTime(_) => "missing_killmail_time",
            DecodeError::BadTime(..) => "bad_killmail_time",
            DecodeError::MissingVictim(_) => "missing_victim",
            DecodeError::MissingSystem(_) => "missing_solar_system_id",
            DecodeError::TooManyAttackers(..) => "too_many_attackers",
            DecodeError::IdMismatch(..) => "id_mismatch",
            DecodeError::InvalidZkb(..) => "invalid_zkb",
            DecodeError::OutOfRange(..) => "out_of_range",
        }
    }

    /// Every reason label, so metrics can be pre-registered at zero.
    pub const REASONS: [&'static str; 14] = [
        "empty",
        "too_large",
        "malformed_json",
        "schema",
        "missing_killmail_id",
        "invalid_killmail_id",
        "missing_killmail_time",
        "bad_killmail_time",
        "missing_victim",
        "missing_solar_system_id",
        "too_many_attackers",
        "id_mismatch",
        "invalid_zkb",
        "out_of_range",
    ];
}

#[derive(Deserialize)]
struct RawTop {
    killmail_id: Option<u64>,
    killmail_time: Option<String>,
    solar_system_id: Option<u32>,
    victim: Option<RawVictim>,
    attackers: Option<Vec<RawAttacker>>,
    zkb: Option<RawZkb>,
    /// R2Z2 envelope.
    esi: Option<Box<RawTop>>,
    sequence_id: Option<u64>,
    sequence_updated: Option<u64>,
    /// RedisQ envelope.
    package: Option<Box<RawPackage>>,
}

#[derive(Deserialize)]
struct RawPackage {
    #[serde(rename = "killID")]
    kill_id: Option<u64>,
    killmail: Option<Box<RawTop>>,
    zkb: Option<RawZkb>,
}

#[derive(Deserialize)]
struct RawVictim {
    character_id: Option<u64>,
    corporation_id: Option<u64>,
    alliance_id: Option<u64>,
    ship_type_id: Option<u32>,
    #[serde(default)]
    damage_taken: u64,
    #[serde(default)]
    #[allow(dead_code)]
    items: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct RawAttacker {
    character_id: Option<u64>,
    corporation_id: Option<u64>,
    alliance_id: Option<u64>,
    ship_type_id: Option<u32>,
    #[serde(default)]
    damage_done: u64,
    #[serde(default)]
    final_blow: bool,
}

#[derive(Deserialize)]
struct RawZkb {
    #[serde(rename = "totalValue", default)]
    total_value: f64,
    #[serde(default)]
    points: f64,
    #[serde(default)]
    npc: bool,
    #[serde(default)]
    solo: bool,
    #[serde(default)]
    awox: bool,
}

/// Decodes one message value into a killmail.
pub fn decode(payload: &[u8]) -> Result<Killmail, DecodeError> {
    if payload.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(DecodeError::Empty);
    }
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge(payload.len()));
    }
    let top: RawTop = serde_json::from_slice(payload).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => DecodeError::Schema(e.to_string()),
        _ => DecodeError::MalformedJson(e.to_string()),
    })?;
    from_raw(top)
}

fn from_raw(top: RawTop) -> Result<Killmail, DecodeError> {
    // RedisQ: {"package": {killID, killmail, zkb}}
    if let Some(pkg) = top.package {
        let inner = pkg.killmail.ok_or(DecodeError::MissingKillmailId)?;
        let km = esi_killmail(*inner, pkg.zkb)?;
        if let Some(id) = pkg.kill_id {
            if id != km.killmail_id {
                return Err(DecodeError::IdMismatch(km.killmail_id, id));
            }
        }
        return Ok(km);
    }
    // R2Z2: {killmail_id, esi, zkb, sequence_id, sequence_updated}
    if let Some(esi) = top.esi {
        let mut km = esi_killmail(*esi, top.zkb)?;
        km.sequence = top.sequence_updated.max(top.sequence_id);
        if let Some(id) = top.killmail_id {
            if id != km.killmail_id {
                return Err(DecodeError::IdMismatch(km.killmail_id, id));
            }
        }
        return Ok(km);
    }
    // ESI, with or without an embedded zkb.
    let zkb = top.zkb;
    esi_killmail(RawTop { zkb: None, ..top }, zkb)
}

fn esi_killmail(esi: RawTop, zkb: Option<RawZkb>) -> Result<Killmail, DecodeError> {
    let id = esi.killmail_id.ok_or(DecodeError::MissingKillmailId)?;
    if id == 0 {
        return Err(DecodeError::InvalidKillmailId);
    }
    let time_str = esi.killmail_time.ok_or(DecodeError::MissingTime(id))?;
    let time = parse_rfc3339(&time_str)
        .filter(|t| (MIN_TIME..MAX_TIME).contains(t))
        .ok_or_else(|| DecodeError::BadTime(id, time_str.clone()))?;
    let victim = esi.victim.ok_or(DecodeError::MissingVictim(id))?;
    let solar_system_id = esi.solar_system_id.ok_or(DecodeError::MissingSystem(id))?;
    let raw_attackers = esi.attackers.unwrap_or_default();
    if raw_attackers.len() > MAX_ATTACKERS {
        return Err(DecodeError::TooManyAttackers(id, raw_attackers.len()));
    }
    let damage = |field, value: u64| {
        if value > MAX_DAMAGE {
            Err(DecodeError::OutOfRange(id, field, value, MAX_DAMAGE))
        } else {
            Ok(value)
        }
    };
    damage("victim.damage_taken", victim.damage_taken)?;
    // Ids are what the API can be asked for: 1 to i64::MAX (an absent id is normal input).
    let ident = |field, value: Option<u64>| match value {
        Some(v) if v == 0 || v > MAX_ID => Err(DecodeError::OutOfRange(id, field, v, MAX_ID)),
        _ => Ok(()),
    };
    ident("killmail_id", Some(id))?;
    ident("solar_system_id", Some(solar_system_id.into()))?;
    ident("victim.character_id", victim.character_id)?;
    ident("victim.corporation_id", victim.corporation_id)?;
    ident("victim.alliance_id", victim.alliance_id)?;
    ident("victim.ship_type_id", victim.ship_type_id.map(u64::from))?;
    for a in &raw_attackers {
        damage("attackers[].damage_done", a.damage_done)?;
        ident("attackers[].character_id", a.character_id)?;
        ident("attackers[].corporation_id", a.corporation_id)?;
        ident("attackers[].alliance_id", a.alliance_id)?;
        ident("attackers[].ship_type_id", a.ship_type_id.map(u64::from))?;
    }
    let zkb = match zkb.or(esi.zkb) {
        None => None,
        Some(z) => Some(convert_zkb(id, z)?),
    };
    Ok(Killmail {
        killmail_id: id,
        time,
        solar_system_id,
        victim: Victim {
            character_id: victim.character_id,
            corporation_id: victim.corporation_id,
            alliance_id: victim.alliance_id,
            ship_type_id: victim.ship_type_id,
            damage_taken: victim.damage_taken,
        },
        attackers: raw_attackers
            .into_iter()
            .map(|a| Attacker {
                character_id: a.character_id,
                corporation_id: a.corporation_id,
                alliance_id: a.alliance_id,
                ship_type_id: a.ship_type_id,
                damage_done: a.damage_done,
                final_blow: a.final_blow,
            })
            .collect(),
        zkb,
        derived: Default::default(),
        sequence: None,
    })
}

fn convert_zkb(id: u64, z: RawZkb) -> Result<Zkb, DecodeError> {
    if !z.total_value.is_finite() || !(0.0..=MAX_ISK).contains(&z.total_value) {
        return Err(DecodeError::InvalidZkb(
            id,
            format!("totalValue {}", z.total_value),
        ));
    }
    if !z.points.is_finite() || !(0.0..=1e9).contains(&z.points) {
        return Err(DecodeError::InvalidZkb(id, format!("points {}", z.points)));
    }
    Ok(Zkb {
        total_value_cents: (z.total_value * CENTS_PER_ISK as f64).round() as i64,
        points: z.points.round() as i64,
        npc: z.npc,
        solo: z.solo,
        awox: z.awox,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_esi() {
        let km = decode(br#"{"attackers":[{"character_id":148333785,"corporation_id":1887411974,"damage_done":627,"final_blow":true,"ship_type_id":3756}],"killmail_id":96953365,"killmail_time":"2021-11-27T00:00:00Z","solar_system_id":30002765,"victim":{"character_id":2117917582,"corporation_id":98677357,"damage_taken":627,"items":[{"flag":27}],"ship_type_id":606}}"#).unwrap();
        assert_eq!(km.killmail_id, 96953365);
        assert_eq!(km.attackers.len(), 1);
        assert!(km.attackers[0].final_blow);
        assert_eq!(km.victim.alliance_id, None);
        assert_eq!(km.zkb, None);
        assert!(!km.is_npc());
    }

    #[test]
    fn npc_rule_without_zkb() {
        let km = decode(br#"{"attackers":[{"corporation_id":1000125,"damage_done":5,"final_blow":true,"ship_type_id":3756}],"killmail_id":1,"killmail_time":"2021-11-27T00:00:00Z","solar_system_id":1,"victim":{"character_id":2117917582,"damage_taken":5}}"#).unwrap();
        assert!(km.is_npc());
    }

    #[test]
    fn bad_inputs_have_reasons() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"   \n", "empty"),
            (b"{", "malformed_json"),
            (b"not json", "malformed_json"),
            (b"[1,2]", "schema"),
            (b"{\"killmail_id\":\"x\"}", "schema"),
            (b"{\"killmail_id\":-5}", "schema"),
            (b"{}", "missing_killmail_id"),
            (b"{\"killmail_id\":0}", "invalid_killmail_id"),
            (b"{\"killmail_id\":3}", "missing_killmail_time"),
            (b"{\"killmail_id\":3,\"killmail_time\":\"yesterday\"}", "bad_killmail_time"),
            (b"{\"killmail_id\":3,\"killmail_time\":\"1990-01-01T00:00:00Z\"}", "bad_killmail_time"),
            (b"{\"killmail_id\":3,\"killmail_time\":\"2021-11-27T00:00:00Z\"}", "missing_victim"),
            (b"{\"killmail_id\":3,\"killmail_time\":\"2021-11-27T00:00:00Z\",\"victim\":{}}", "missing_solar_system_id"),
            (b"{\"killmail_id\":3,\"killmail_time\":\"2021-11-27T00:00:00Z\",\"victim\":{},\"solar_system_id\":1,\"zkb\":{\"totalValue\":-1}}", "invalid_zkb"),
            (b"{\"killmail_id\":3,\"killmail_time\":\"2021-11-27T00:00:00Z\",\"victim\":{},\"solar_system_id\":1,\"zkb\":{\"totalValue\":1e300}}", "invalid_zkb"),
            (b"{\"killmail_id\":3,\"esi\":{\"killmail_id\":4,\"killmail_time\":\"2021-11-27T00:00:00Z\",\"victim\":{},\"solar_system_id\":1}}", "id_mismatch"),
            (b"{\"package\":{\"killID\":4}}", "missing_killmail_id"),
            (b"{\"package\":null}", "missing_killmail_id"),
            (b"\xff\xfe", "malformed_json"),
            (b"{\"killmail_id\":3,\"killmail_time\":\"2021-11-27T00:00:00Z\",\"victim\":{\"damage_taken\":18446744073709551615},\"solar_system_id\":1}", "out_of_range"),
            (b"{\"killmail_id\":3,\"killmail_time\":\"2021-11-27T00:00:00Z\",\"victim\":{},\"solar_system_id\":1,\"attackers\":[{\"damage_done\":100000000001}]}", "out_of_range"),
            // Ids the API could not be asked for: 0, or above i64::MAX.
            (b"{\"killmail_id\":18446744073709551615,\"killmail_time\":\"2021-11-27T00:00:00Z\",\"victim\":{},\"solar_system_id\":1}", "out_of_range"),
            (b"{\"killmail_id\":3,\"killmail_time\":\"2021-11-27T00:00:00Z\",\"victim\":{},\"solar_system_id\":0}", "out_of_range"),
            (b"{\"killmail_id\":3,\"killmail_time\":\"2021-11-27T00:00:00Z\",\"victim\":{\"character_id\":0},\"solar_system_id\":1}", "out_of_range"),
            (b"{\"killmail_id\":3,\"killmail_time\":\"2021-11-27T00:00:00Z\",\"victim\":{\"ship_type_id\":0},\"solar_system_id\":1}", "out_of_range"),
            (b"{\"killmail_id\":3,\"killmail_time\":\"2021-11-27T00:00:00Z\",\"victim\":{},\"solar_system_id\":1,\"attackers\":[{\"alliance_id\":9223372036854775808}]}", "out_of_range"),
            (b"{\"killmail_id\":3,\"killmail_time\":\"2021-11-27T00:00:00Z\",\"victim\":{},\"solar_system_id\":1,\"attackers\":[{\"corporation_id\":0}]}", "out_of_range"),
            // Negative zkb values.
            (b"{\"killmail_id\":3,\"killmail_time\":\"2021-11-27T00:00:00Z\",\"victim\":{},\"solar_system_id\":1,\"zkb\":{\"totalValue\":5,\"points\":-1}}", "invalid_zkb"),
        ];
        for (input, reason) in cases {
            let err = decode(input).expect_err(&String::from_utf8_lossy(input));
            assert_eq!(
                err.reason(),
                *reason,
                "{}: {err}",
                String::from_utf8_lossy(input)
            );
            assert!(DecodeError::REASONS.contains(&err.reason()));
        }
        let big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        let mut big = big;
        big[0] = b'{';
        assert_eq!(decode(&big).unwrap_err().reason(), "too_large");
    }
}
