//! Cloudflare Access protection of a rule (`originRequest.access`), as cloudflared's
//! `JWTValidator` (ingress/middleware/jwtvalidator.go, go-oidc underneath): a request must carry
//! a `Cf-Access-Jwt-Assertion` JWT signed (RS256) by one of the team's keys, issued by
//! `https://<team>.cloudflareaccess.com`, not expired, with one of the rule's `audTag`s.
//!
//! Missing token or no matching audience: 403. A token that does not verify (signature,
//! issuer, expiry), or no keys to check it with: the request fails with an error (the edge
//! answers 502), never reaching the origin. Keys are fetched by the driver; [`KeyFetcher`]
//! decides when.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::IngressError;

/// The request header carrying the Access JWT.
pub const JWT_HEADER: &str = "Cf-Access-Jwt-Assertion";

/// go-oidc's leeway on `nbf` (clock skew); `exp` has none.
const NBF_LEEWAY_SECS: f64 = 300.0;

/// Most keys kept from one key set (Cloudflare publishes two).
const MAX_KEYS: usize = 32;

/// `originRequest.access` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AccessConfig {
    /// `required`: only then are requests checked.
    pub required: bool,
    /// `teamName`.
    pub team_name: String,
    /// `audTag`: accepted audiences.
    pub aud_tag: Vec<String>,
    /// `environment`: `fed` picks FedRAMP's Access domain.
    pub environment: String,
}

/// A rule's effective Access check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    /// The `iss` a token must carry.
    pub issuer: String,
    /// Where the team's signing keys are.
    pub certs_url: String,
    /// Accepted audiences (at least one must be in the token's `aud`).
    pub aud_tags: Vec<String>,
}

impl AccessPolicy {
    /// The check `c` asks for, if any; cloudflared's `validateAccessConfiguration`.
    pub fn from_config(c: &AccessConfig) -> Result<Option<Self>, IngressError> {
        if !c.required {
            return Ok(None);
        }
        if c.team_name.is_empty() && !c.aud_tag.is_empty() {
            return Err(IngressError::Access(
                "access.TeamName cannot be blank when access.audTags are present".into(),
            ));
        }
        let issuer = if c.environment == "fed" {
            format!("https://{}.fed.cloudflareaccess.com", c.team_name)
        } else {
            format!("https://{}.cloudflareaccess.com", c.team_name)
        };
        Ok(Some(Self {
            certs_url: format!("{issuer}/cdn-cgi/access/certs"),
            issuer,
            aud_tags: c.aud_tag.clone(),
        }))
    }
}

/// Why a key set was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("oidc: failed to decode keys: {0}")]
pub struct KeySetError(String);

/// One team's signing keys (a JWKS document), RSA keys only: go-oidc verifies RS256 alone.
#[derive(Clone)]
pub struct KeySet {
    keys: Vec<(Option<String>, DecodingKey)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(kid, _)| kid))
            .finish()
    }
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<RawJwk>,
}

#[derive(Deserialize)]
struct RawJwk {
    #[serde(default)]
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

impl KeySet {
    /// Parses a JWKS document (`{"keys":[...]}`, Cloudflare adds other fields).
    pub fn from_json(body: &[u8]) -> Result<Self, KeySetError> {
        let raw: RawJwks = serde_json::from_slice(body).map_err(|e| KeySetError(e.to_string()))?;
        let mut keys = Vec::new();
        for k in raw
            .keys
            .into_iter()
            .filter(|k| k.kty == "RSA")
            .take(MAX_KEYS)
        {
            let (Some(n), Some(e)) = (k.n, k.e) else {
                continue;
            };
            let key = DecodingKey::from_rsa_components(&n, &e)
                .map_err(|e| KeySetError(format!("key {:?}: {e}", k.kid)))?;
            keys.push((k.kid, key));
        }
        if keys.is_empty() {
            return Err(KeySetError("no RSA keys".into()));
        }
        Ok(Self { keys })
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when it holds none (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The signing keys known now, by certs URL, and the wall clock to judge expiry by.
#[derive(Debug, Clone)]
pub struct AccessKeys {
    sets: BTreeMap<String, Arc<KeySet>>,
    /// `Instant` and Unix seconds at the same moment: expiry is judged at
    /// `unix + (now - at)`, so core reads no clock.
    at: Instant,
    unix: f64,
}

impl AccessKeys {
    /// No keys; the wall clock read `unix` seconds at `at`.
    pub fn new(at: Instant, unix: f64) -> Self {
        Self {
            sets: BTreeMap::new(),
            at,
            unix,
        }
    }

    /// The keys of `certs_url`.
    pub fn get(&self, certs_url: &str) -> Option<&KeySet> {
        self.sets.get(certs_url).map(|k| &**k)
    }

    /// Unix seconds at `now`.
    pub fn unix_at(&self, now: Instant) -> f64 {
        match now.checked_duration_since(self.at) {
            Some(d) => self.unix + d.as_secs_f64(),
            None => self.unix - self.at.duration_since(now).as_secs_f64(),
        }
    }
}

/// What the check decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The request may go on.
    Pass,
    /// Answer 403 (no token, or no accepted audience).
    Forbidden(String),
    /// Fail the request with this error (the edge answers 502).
    Error(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    iss: String,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
}

/// Checks a request's `token` against `policy` with the keys in `keys`, at `now`.
pub fn check(
    policy: &AccessPolicy,
    token: Option<&str>,
    keys: Option<&AccessKeys>,
    now: Instant,
) -> Verdict {
    let token = match token {
        Some(t) if !t.is_empty() => t,
        _ => return Verdict::Forbidden("no access token in request".into()),
    };
    let fail = |why: String| {
        Verdict::Error(format!(
            "error while processing middleware handler AccessJWTValidator: {why}"
        ))
    };
    let header = match jsonwebtoken::decode_header(token) {
        Ok(h) if h.alg == Algorithm::RS256 => h,
        Ok(h) => {
            return fail(format!(
                "oidc: malformed jwt: unexpected signature algorithm {:?}",
                h.alg
            ))
        }
        Err(e) => return fail(format!("oidc: malformed jwt: {e}")),
    };
    let Some(keys_now) = keys else {
        return fail(format!(
            "failed to verify signature: fetching keys from {}: none yet",
            policy.certs_url
        ));
    };
    let Some(set) = keys_now.get(&policy.certs_url) else {
        return fail(format!(
            "failed to verify signature: fetching keys from {}: none yet",
            policy.certs_url
        ));
    };
    let mut validation = Validation::new(Algorithm::RS256);
    // Expiry, not-before and audience are checked below, as go-oidc and cloudflared do.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = set
        .keys
        .iter()
        .filter(|(kid, _)| header.kid.is_none() || *kid == header.kid)
        .find_map(|(_, key)| jsonwebtoken::decode::<Claims>(token, key, &validation).ok());
    let Some(data) = claims else {
        return fail("failed to verify signature: failed to verify id token signature".into());
    };
    let c = data.claims;
    if c.iss != policy.issuer {
        return fail(format!(
            "oidc: id token issued by a different provider, expected {:?} got {:?}",
            policy.issuer, c.iss
        ));
    }
    let unix = keys_now.unix_at(now);
    // A token without `exp` has expired (go-oidc reads it as the zero time).
    if c.exp.is_none_or(|exp| exp < unix) {
        return fail(format!(
            "oidc: token is expired (Token Expiry: {:?})",
            c.exp
        ));
    }
    if c.nbf.is_some_and(|nbf| unix + NBF_LEEWAY_SECS < nbf) {
        return fail("oidc: current time before the nbf (not before) time".into());
    }
    let aud = match c.aud {
        None => Vec::new(),
        Some(Audience::One(a)) => vec![a],
        Some(Audience::Many(a)) => a,
    };
    if aud.iter().any(|a| policy.aud_tags.contains(a)) {
        Verdict::Pass
    } else {
        Verdict::Forbidden(format!("Invalid token in jwt: {aud:?}"))
    }
}

/// How long one key fetch may take, connect to last byte (`Io::FetchAccessKeys`).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest key-set response a driver reads (Cloudflare's is a few KiB).
pub const MAX_KEY_SET: usize = 1 << 20;

/// How often a team's keys are fetched again while fetching works.
pub const REFRESH: Duration = Duration::from_secs(60);
/// First retry after a failed fetch; doubles up to [`REFRESH`].
pub const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Team {
    keys: Option<Arc<KeySet>>,
    next: Instant,
    in_flight: bool,
    failures: u32,
}

/// When to fetch which team's signing keys: every certs URL the rules name, at once, then
/// every [`REFRESH`]; a failed fetch is retried from [`RETRY`], doubling, and keeps the keys
/// it had (go-oidc's cache does too). Bounded by the rules: one URL per distinct team.
#[derive(Debug, Default)]
pub struct KeyFetcher {
    teams: BTreeMap<String, Team>,
}

impl KeyFetcher {
    /// No teams.
    pub fn new() -> Self {
        Self::default()
    }

    /// The rules now name these certs URLs: new ones are fetched at once, gone ones forgotten.
    pub fn set_urls<'a>(&mut self, now: Instant, urls: impl IntoIterator<Item = &'a str>) {
        let wanted: std::collections::BTreeSet<&str> = urls.into_iter().collect();
        self.teams.retain(|url, _| wanted.contains(url.as_str()));
        for url in wanted {
            self.teams.entry(url.to_owned()).or_insert(Team {
                keys: None,
                next: now,
                in_flight: false,
                failures: 0,
            });
        }
    }

    /// A URL to fetch now, if one is due; answer with [`KeyFetcher::handle_fetched`].
    pub fn poll_fetch(&mut self, now: Instant) -> Option<String> {
        let (url, team) = self
            .teams
            .iter_mut()
            .find(|(_, t)| !t.in_flight && t.next <= now)?;
        team.in_flight = true;
        Some(url.clone())
    }

    /// When the next fetch is due (none while all are in flight).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.teams
            .values()
            .filter(|t| !t.in_flight)
            .map(|t| t.next)
            .min()
    }

    /// The body fetched from `url` (or why not); a body that is not a key set is a failure.
    pub fn handle_fetched(
        &mut self,
        now: Instant,
        url: &str,
        body: Result<&[u8], String>,
    ) -> Result<(), String> {
        let Some(team) = self.teams.get_mut(url) else {
            return Ok(());
        };
        team.in_flight = false;
        match body.and_then(|b| KeySet::from_json(b).map_err(|e| e.to_string())) {
            Ok(keys) => {
                team.keys = Some(Arc::new(keys));
                team.failures = 0;
                team.next = now + REFRESH;
                Ok(())
            }
            Err(e) => {
                let backoff = RETRY.saturating_mul(1 << team.failures.min(6)).min(REFRESH);
                team.failures = team.failures.saturating_add(1);
                team.next = now + backoff;
                Err(e)
            }
        }
    }

    /// The keys known now, stamped with the wall clock (`unix` seconds at `now`).
    pub fn snapshot(&self, now: Instant, unix: f64) -> AccessKeys {
        let mut k = AccessKeys::new(now, unix);
        for (url, team) in &self.teams {
            if let Some(keys) = &team.keys {
                k.sets.insert(url.clone(), keys.clone());
            }
        }
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const JWKS: &str = include_str!("../../tests/data/access/jwks.json");
    const TEAM_KEY: &str = include_str!("../../tests/data/access/team_key.pem");
    const OTHER_KEY: &str = include_str!("../../tests/data/access/other_key.pem");
    const URL: &str = "https://team.cloudflareaccess.com/cdn-cgi/access/certs";
    const NOW: f64 = 1_800_000_000.0;

    fn policy() -> AccessPolicy {
        AccessPolicy::from_config(&AccessConfig {
            required: true,
            team_name: "team".into(),
            aud_tag: vec!["aud-a".into(), "aud-b".into()],
            environment: String::new(),
        })
        .unwrap()
        .unwrap()
    }

    fn keys(at: Instant) -> AccessKeys {
        let mut f = KeyFetcher::new();
        f.set_urls(at, [URL]);
        assert_eq!(f.poll_fetch(at).as_deref(), Some(URL));
        f.handle_fetched(at, URL, Ok(JWKS.as_bytes())).unwrap();
        f.snapshot(at, NOW)
    }

    fn token(key: &str, alg: Algorithm, kid: Option<&str>, claims: serde_json::Value) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_owned);
        let k = match alg {
            Algorithm::HS256 => EncodingKey::from_secret(b"secret").unwrap(),
            _ => EncodingKey::from_rsa_pem(key.as_bytes()).unwrap(),
        };
        jsonwebtoken::encode(&h, &claims, &k).unwrap()
    }

    fn claims(aud: serde_json::Value, exp: f64) -> serde_json::Value {
        serde_json::json!({
            "iss": "https://team.cloudflareaccess.com",
            "aud": aud,
            "exp": exp,
            "sub": "u",
        })
    }

    fn verdict(t: Option<&str>, keys: Option<&AccessKeys>, now: Instant) -> Verdict {
        check(&policy(), t, keys, now)
    }

    fn is_error(v: &Verdict, part: &str) -> bool {
        matches!(v, Verdict::Error(e) if e.contains(part) && e.starts_with("error while processing middleware handler AccessJWTValidator: "))
    }

    #[test]
    fn a_team_token_with_an_accepted_audience_passes_and_anything_else_is_refused() {
        let at = Instant::now();
        let k = keys(at);
        let good = token(
            TEAM_KEY,
            Algorithm::RS256,
            Some("k1"),
            claims(serde_json::json!(["x", "aud-b"]), NOW + 60.0),
        );
        assert_eq!(verdict(Some(&good), Some(&k), at), Verdict::Pass);
        // A single-string audience, and no kid: every key is tried.
        let one = token(
            TEAM_KEY,
            Algorithm::RS256,
            None,
            claims(serde_json::json!("aud-a"), NOW + 60.0),
        );
        assert_eq!(verdict(Some(&one), Some(&k), at), Verdict::Pass);

        assert!(
            matches!(verdict(None, Some(&k), at), Verdict::Forbidden(r) if r == "no access token in request")
        );
        assert!(matches!(
            verdict(Some(""), Some(&k), at),
            Verdict::Forbidden(_)
        ));
        let other_aud = token(
            TEAM_KEY,
            Algorithm::RS256,
            Some("k1"),
            claims(serde_json::json!(["x"]), NOW + 60.0),
        );
        assert!(
            matches!(verdict(Some(&other_aud), Some(&k), at), Verdict::Forbidden(r) if r.contains("Invalid token in jwt"))
        );

        // Expiry is judged at `now`, from the snapshot's wall clock: good until its second.
        assert_eq!(
            verdict(Some(&good), Some(&k), at + Duration::from_secs(60)),
            Verdict::Pass
        );
        assert!(is_error(
            &verdict(Some(&good), Some(&k), at + Duration::from_secs(61)),
            "expired"
        ));
        let no_exp = token(
            TEAM_KEY,
            Algorithm::RS256,
            Some("k1"),
            serde_json::json!({"iss": "https://team.cloudflareaccess.com", "aud": "aud-a"}),
        );
        assert!(is_error(&verdict(Some(&no_exp), Some(&k), at), "expired"));
        let early = token(
            TEAM_KEY,
            Algorithm::RS256,
            Some("k1"),
            serde_json::json!({"iss": "https://team.cloudflareaccess.com", "aud": "aud-a", "exp": NOW + 900.0, "nbf": NOW + 301.0}),
        );
        assert!(is_error(&verdict(Some(&early), Some(&k), at), "nbf"));
        let skewed = token(
            TEAM_KEY,
            Algorithm::RS256,
            Some("k1"),
            serde_json::json!({"iss": "https://team.cloudflareaccess.com", "aud": "aud-a", "exp": NOW + 900.0, "nbf": NOW + 299.0}),
        );
        assert_eq!(
            verdict(Some(&skewed), Some(&k), at),
            Verdict::Pass,
            "5 minutes of nbf leeway"
        );

        let mut c = claims(serde_json::json!("aud-a"), NOW + 60.0);
        c["iss"] = "https://evil.cloudflareaccess.com".into();
        let other_team = token(TEAM_KEY, Algorithm::RS256, Some("k1"), c);
        assert!(is_error(
            &verdict(Some(&other_team), Some(&k), at),
            "different provider"
        ));
        let forged = token(
            OTHER_KEY,
            Algorithm::RS256,
            Some("k1"),
            claims(serde_json::json!("aud-a"), NOW + 60.0),
        );
        assert!(is_error(&verdict(Some(&forged), Some(&k), at), "signature"));
        let unknown_kid = token(
            TEAM_KEY,
            Algorithm::RS256,
            Some("k9"),
            claims(serde_json::json!("aud-a"), NOW + 60.0),
        );
        assert!(is_error(
            &verdict(Some(&unknown_kid), Some(&k), at),
            "signature"
        ));
        let hmac = token(
            "",
            Algorithm::HS256,
            Some("k1"),
            claims(serde_json::json!("aud-a"), NOW + 60.0),
        );
        assert!(is_error(&verdict(Some(&hmac), Some(&k), at), "malformed"));
        assert!(is_error(
            &verdict(Some("not.a.jwt"), Some(&k), at),
            "malformed"
        ));
        assert!(
            is_error(&verdict(Some(&good), None, at), "none yet"),
            "no keys: refused, never passed"
        );
        let empty = AccessKeys::new(at, NOW);
        assert!(is_error(
            &verdict(Some(&good), Some(&empty), at),
            "none yet"
        ));
    }

    #[test]
    fn access_config_as_cloudflared_validates_it() {
        let c = |required, team: &str, aud: &[&str], env: &str| AccessConfig {
            required,
            team_name: team.into(),
            aud_tag: aud.iter().map(|s| (*s).to_owned()).collect(),
            environment: env.into(),
        };
        assert_eq!(
            AccessPolicy::from_config(&c(false, "t", &["a"], "")),
            Ok(None)
        );
        assert!(AccessPolicy::from_config(&c(true, "", &["a"], "")).is_err());
        // "required" with nothing else: every request is refused (no key set can be fetched).
        assert!(AccessPolicy::from_config(&c(true, "", &[], ""))
            .unwrap()
            .is_some());
        let fed = AccessPolicy::from_config(&c(true, "t", &["a"], "fed"))
            .unwrap()
            .unwrap();
        assert_eq!(
            fed.certs_url,
            "https://t.fed.cloudflareaccess.com/cdn-cgi/access/certs"
        );
        assert_eq!(fed.issuer, "https://t.fed.cloudflareaccess.com");
    }

    #[test]
    fn key_fetch_schedule_refreshes_backs_off_and_keeps_old_keys() {
        let t0 = Instant::now();
        let mut f = KeyFetcher::new();
        assert_eq!(f.poll_timeout(), None, "no teams, no fetches");
        f.set_urls(t0, [URL, URL]);
        assert_eq!(f.poll_timeout(), Some(t0));
        assert_eq!(f.poll_fetch(t0).as_deref(), Some(URL));
        assert_eq!(f.poll_fetch(t0), None, "one fetch in flight per team");
        assert_eq!(f.poll_timeout(), None);
        assert!(f.handle_fetched(t0, URL, Err("refused".into())).is_err());
        assert!(f.snapshot(t0, NOW).get(URL).is_none());
        assert_eq!(f.poll_timeout(), Some(t0 + RETRY));
        assert_eq!(f.poll_fetch(t0), None, "not before the retry");
        let t1 = t0 + RETRY;
        assert_eq!(f.poll_fetch(t1).as_deref(), Some(URL));
        assert!(
            f.handle_fetched(t1, URL, Ok(b"{\"keys\":[]}")).is_err(),
            "an empty key set is a failure"
        );
        assert_eq!(f.poll_timeout(), Some(t1 + RETRY * 2), "doubling");
        let t2 = t1 + RETRY * 2;
        f.poll_fetch(t2).unwrap();
        f.handle_fetched(t2, URL, Ok(JWKS.as_bytes())).unwrap();
        assert_eq!(f.snapshot(t2, NOW).get(URL).map(KeySet::len), Some(1));
        assert_eq!(f.poll_timeout(), Some(t2 + REFRESH));
        let t3 = t2 + REFRESH;
        f.poll_fetch(t3).unwrap();
        assert!(f.handle_fetched(t3, URL, Err("down".into())).is_err());
        assert!(
            f.snapshot(t3, NOW).get(URL).is_some(),
            "a failed refresh keeps the keys"
        );
        assert!(f.poll_timeout().unwrap() > t3, "the deadline moves forward");
        // Backoff never exceeds the refresh period.
        let mut t = t3;
        for _ in 0..20 {
            t = f.poll_timeout().unwrap();
            f.poll_fetch(t).unwrap();
            let _ = f.handle_fetched(t, URL, Err("down".into()));
            assert!(f.poll_timeout().unwrap() - t <= REFRESH);
        }
        f.set_urls(t, std::iter::empty());
        assert_eq!(f.poll_timeout(), None, "a team no rule names is forgotten");
        assert!(f.snapshot(t, NOW).get(URL).is_none());
    }

    #[test]
    fn key_sets_are_parsed_strictly_and_bounded() {
        assert_eq!(KeySet::from_json(JWKS.as_bytes()).unwrap().len(), 1);
        assert!(KeySet::from_json(b"").is_err());
        assert!(
            KeySet::from_json(b"{\"keys\":[{\"kty\":\"EC\",\"x\":\"a\",\"y\":\"b\"}]}").is_err()
        );
        assert!(
            KeySet::from_json(b"{\"keys\":[{\"kty\":\"RSA\",\"n\":\"!!\",\"e\":\"AQAB\"}]}")
                .is_err()
        );
        let many = format!(
            "{{\"keys\":[{}]}}",
            vec![r#"{"kty":"RSA","n":"AQAB","e":"AQAB"}"#; 100].join(",")
        );
        assert_eq!(KeySet::from_json(many.as_bytes()).unwrap().len(), MAX_KEYS);
    }
}
