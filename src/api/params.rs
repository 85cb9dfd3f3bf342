//! What requests carry, typed: the query of each endpoint is a struct deserialized by
//! [`Params`] (an unknown or repeated parameter is a 400 naming it), path parameters by
//! [`PathParam`], and every value with a fixed set of choices is an enum made by
//! [`choice!`], whose names are the only definition of what the API accepts.

use std::borrow::Cow;
use std::collections::BTreeSet;

use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::Deserialize;
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use kmflow_dataflows::keys::Metric;
use kmflow_dataflows::EntityKind;

use super::error::ApiError;

/// The query string as `T`: a parameter `T` does not name, one given twice, a value of the
/// wrong form, or a query that is not valid percent-encoded UTF-8 is a 400 that names it.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        let raw = parts.uri.query().unwrap_or("");
        let pairs = form_urlencoded::parse(raw.as_bytes());
        if pairs
            .clone()
            .any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}'))
        {
            return Err(ApiError::bad_request(
                "the query string is not valid percent-encoded UTF-8",
            ));
        }
        let de = serde_urlencoded::Deserializer::new(pairs);
        serde_path_to_error::deserialize(de)
            .map(Params)
            .map_err(|e| {
                ApiError::bad_request(query_message(
                    &e.path().to_string(),
                    &e.into_inner().to_string(),
                ))
            })
    }
}

/// serde's words for a query mistake, in the API's: parameters, not fields.
fn query_message(path: &str, inner: &str) -> String {
    if let Some(rest) = inner.strip_prefix("unknown field ") {
        let (name, allowed) = rest.split_once(", expected").unwrap_or((rest, ""));
        let allowed = allowed
            .trim_start_matches(" one of ")
            .trim_start_matches(' ')
            .replace('`', "");
        return format!("unknown parameter {name}; allowed: {allowed}");
    }
    if let Some(name) = inner.strip_prefix("duplicate field ") {
        return format!("parameter {name} is given more than once");
    }
    if inner.starts_with("invalid ") {
        return inner.to_string();
    }
    format!("invalid {path}: {inner}")
}

/// A path parameter as `T`; one that does not parse (or is not UTF-8) is a 400 JSON error.
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for PathParam<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        use axum::extract::rejection::PathRejection;
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(p)) => Ok(PathParam(p)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let inner = e.into_kind();
                Err(ApiError::bad_request(match &inner {
                    axum::extract::path::ErrorKind::Message(m) => m.clone(),
                    other => other.to_string(),
                }))
            }
            Err(e) => Err(ApiError::Framework(e.status(), e.body_text())),
        }
    }
}

/// A non-negative integer written with ASCII digits only (`+5`, ` 5`, `5.0` are not).
pub(crate) fn parse_decimal(raw: &str) -> Option<u64> {
    if raw.is_empty() || raw.len() > 20 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

/// Parses an entity or killmail id: a positive integer in plain decimal (no sign, no spaces)
/// that fits the contract's `int64` (EVE's ids do).
pub(crate) fn parse_id(raw: &str, what: &str) -> Result<u64, String> {
    match parse_decimal(raw) {
        Some(id) if id > 0 && id <= i64::MAX as u64 => Ok(id),
        _ => Err(format!(
            "{what} id must be a positive integer up to {}, got {raw:?}",
            i64::MAX
        )),
    }
}

/// An id in a path: a positive integer in plain decimal.
#[derive(Clone, Copy, Debug)]
pub struct Id(pub u64);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Cow::<str>::deserialize(d)?;
        parse_id(&raw, "the").map(Id).map_err(D::Error::custom)
    }
}

/// `limit`: how many rows a page holds, 1 to [`Limit::MAX`] (default [`Limit::DEFAULT`]).
#[derive(Clone, Copy, Debug)]
pub struct Limit(pub usize);

// Every all-time leaderboard index holds at least a page this deep (or every entry).
const _: () = assert!(Limit::MAX <= crate::state::LEADERBOARD_DEPTH);

impl Limit {
    pub const MAX: usize = 1000;
    pub const DEFAULT: usize = 100;
    pub fn or_default(l: Option<Limit>) -> usize {
        l.map_or(Self::DEFAULT, |l| l.0)
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Cow::<str>::deserialize(d)?;
        match parse_decimal(&raw).map(|n| n as usize) {
            Some(n) if (1..=Limit::MAX).contains(&n) => Ok(Limit(n)),
            _ => Err(D::Error::custom(format!(
                "invalid limit {raw:?}: must be an integer from 1 to {}",
                Limit::MAX
            ))),
        }
    }
}

impl PartialSchema for Limit {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::Integer))
            .minimum(Some(1))
            .maximum(Some(Limit::MAX as u64))
            .default(Some(Limit::DEFAULT.into()))
            .into()
    }
}
impl ToSchema for Limit {}

/// The error of a value outside a fixed set: names the parameter and what is allowed.
pub(crate) fn bad_choice(name: &str, got: &str, allowed: &[&str]) -> String {
    format!("invalid {name} {got:?}; allowed: {}", allowed.join(", "))
}

/// A string enum of the API: its names (as accepted and as answered), its parameter name for
/// errors, serde and the OpenAPI schema, from one list.
macro_rules! choice {
    ($(#[$m:meta])* $name:ident, $param:literal { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub const NAMES: &'static [&'static str] = &[$($text),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
            pub fn parse(raw: &str) -> Result<Self, String> {
                match raw {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::api::params::bad_choice($param, raw, Self::NAMES)),
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = std::borrow::Cow::<str>::deserialize(d)?;
                $name::parse(&raw).map_err(serde::de::Error::custom)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::SchemaType::Type(
                        utoipa::openapi::schema::Type::String,
                    ))
                    .enum_values(Some($name::NAMES.iter().copied()))
                    .into()
            }
        }
        impl utoipa::ToSchema for $name {}
    };
}
pub(crate) use choice;

choice!(
    /// A rolling window ending at the stream clock's day, or all time.
    Window, "window" { D7 = "7d", D30 = "30d", D90 = "90d", All = "all" }
);

impl Window {
    /// The index of a rolling window (0 = 7d), `None` for all time.
    pub fn index(self) -> Option<u8> {
        match self {
            Window::D7 => Some(0),
            Window::D30 => Some(1),
            Window::D90 => Some(2),
            Window::All => None,
        }
    }
}

choice!(
    /// A sort direction.
    Order, "order" { Desc = "desc", Asc = "asc" }
);

choice!(
    /// The kinds of entity, plural as in the paths.
    Kind, "leaderboard" {
        Characters = "characters",
        Corporations = "corporations",
        Alliances = "alliances",
    }
);

impl Kind {
    pub fn entity(self) -> EntityKind {
        match self {
            Kind::Characters => EntityKind::Character,
            Kind::Corporations => EntityKind::Corporation,
            Kind::Alliances => EntityKind::Alliance,
        }
    }
}

/// `by`: the ranking metric of a leaderboard (the metrics the pipeline ranks).
#[derive(Clone, Copy, Debug)]
pub struct By(pub Metric);

impl By {
    fn names() -> Vec<&'static str> {
        Metric::ALL.iter().map(|m| m.as_str()).collect()
    }
}

impl<'de> Deserialize<'de> for By {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Cow::<str>::deserialize(d)?;
        Metric::parse(&raw)
            .map(By)
            .ok_or_else(|| D::Error::custom(bad_choice("by", &raw, &By::names())))
    }
}

impl PartialSchema for By {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .enum_values(Some(By::names()))
            .default(Some("kills".into()))
            .into()
    }
}
impl ToSchema for By {}

/// A comma-separated list whose items must each be one of `allowed` (or `all`, for every
/// one). `None` when the parameter is absent.
pub(crate) fn parse_list(
    name: &str,
    raw: Option<&str>,
    allowed: &[&str],
) -> Result<Option<BTreeSet<String>>, ApiError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let mut out = BTreeSet::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item != "all" && !allowed.contains(&item) {
            return Err(ApiError::bad_request(bad_choice(name, item, allowed)));
        }
        out.insert(item.to_string());
    }
    if out.contains("all") {
        out = allowed.iter().map(|s| s.to_string()).collect();
    }
    Ok(Some(out))
}

/// `GET /v1/{characters|corporations|alliances}/{id}`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EntityQuery {
    /// Comma-separated statistic fields to answer (default: all), e.g. `kills,isk_destroyed`.
    pub fields: Option<String>,
    /// Comma-separated sections: `windows` (the default), `months`, `groups`, `top_ships`,
    /// `top_systems`, `activity`, or `all`.
    pub include: Option<String>,
}

/// `GET /v1/corporations/{id}/members`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MembersQuery {
    /// Default `all`.
    pub window: Option<Window>,
    /// Default `kills`. `first_seen`/`last_seen` need `window=all`.
    pub sort: Option<super::rosters::RosterSort>,
    /// Default `desc`.
    pub order: Option<Order>,
    pub limit: Option<Limit>,
    /// `next_cursor` of the previous page, unchanged.
    pub cursor: Option<String>,
    /// Comma-separated statistic fields to answer (default: all).
    pub fields: Option<String>,
}

/// `GET /v1/leaderboards/{kind}`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LeaderboardQuery {
    /// Default `kills`.
    pub by: Option<By>,
    /// Default `all`.
    pub window: Option<Window>,
    pub limit: Option<Limit>,
    /// Comma-separated statistic fields to answer (default: all).
    pub fields: Option<String>,
}

/// `GET /v1/dead-letters`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLettersQuery {
    pub limit: Option<Limit>,
    /// `next_cursor` of the previous page, unchanged.
    pub cursor: Option<String>,
    /// Only dead letters with this reason (e.g. `malformed_json`).
    pub reason: Option<String>,
    /// Only dead letters read from this topic.
    pub topic: Option<String>,
}

/// Lowercase hex of `bytes` (opaque cursors).
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string; `None` unless it is pairs of hex digits (any other text,
/// non-ASCII included, is refused without panicking).
pub(crate) fn from_hex(raw: &str) -> Option<Vec<u8>> {
    if !raw.len().is_multiple_of(2) || raw.len() > 512 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    raw.as_bytes()
        .chunks_exact(2)
        .map(|p| Some((digit(p[0])? * 16 + digit(p[1])?) as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_mistakes_are_said_in_parameters() {
        assert_eq!(
            query_message(
                "",
                "unknown field `frob`, expected one of `fields`, `include`"
            ),
            "unknown parameter `frob`; allowed: fields, include"
        );
        assert_eq!(
            query_message("", "duplicate field `by`"),
            "parameter `by` is given more than once"
        );
        assert_eq!(
            Window::parse("8d").unwrap_err(),
            "invalid window \"8d\"; allowed: 7d, 30d, 90d, all"
        );
    }
}
