//! Access signing keys: the connector decides when each team's keys are fetched (at start,
//! after a configuration push, each minute, sooner after a failure); the driver only GETs.

use super::*;
use crate::ingress::{Ingress, OriginRequestConfig, Service};

const URL: &str = "https://team.cloudflareaccess.com/cdn-cgi/access/certs";
const JWKS: &str = include_str!("../../../../tests/data/access/jwks.json");

fn access_world(seed: u64) -> World {
    let options: OriginRequestConfig = serde_json::from_str(
        r#"{"access":{"required":true,"teamName":"team","audTag":["aud-a"]}}"#,
    )
    .expect("options");
    let ingress = Ingress::single_with(Service::HttpStatus(200), &options).expect("rules");
    World::with(1, seed, |c| {
        c.connector.data.ingress = Some(std::sync::Arc::new(ingress));
    })
}

impl World {
    fn fetched(&mut self, body: Result<&[u8], &str>) {
        let now = self.now;
        self.connector.handle_input(
            now,
            Input::AccessKeysFetched {
                url: URL,
                body,
                unix: 1_800_000_000.0,
            },
        );
        self.flush();
    }

    fn key_events(&self) -> Vec<Option<String>> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                SupervisorEvent::AccessKeysFetched { url, error } => {
                    assert_eq!(url, URL);
                    Some(error.clone())
                }
                _ => None,
            })
            .collect()
    }
}

#[test]
fn keys_are_fetched_at_start_retried_after_a_failure_and_refreshed_each_minute() {
    let mut w = access_world(1);
    w.flush();
    assert_eq!(w.origin.key_fetches, [URL], "asked for at once");
    // One fetch at a time: none more while it is out, however long it takes.
    w.run(Duration::from_secs(30), |_| false);
    assert_eq!(w.origin.key_fetches.len(), 1);

    let failed_at = w.now;
    w.fetched(Err("dial team.cloudflareaccess.com: refused"));
    assert_eq!(
        w.key_events(),
        [Some("dial team.cloudflareaccess.com: refused".to_owned())]
    );
    // Retried a second later (then 2 s, 4 s, ...), never at once: no busy loop.
    assert!(w
        .deadline
        .is_some_and(|d| d > failed_at && d <= failed_at + Duration::from_secs(1)));
    w.run(Duration::from_secs(31) + Duration::from_millis(500), |w| {
        w.origin.key_fetches.len() == 2
    });
    assert_eq!(w.origin.key_fetches.len(), 2);
    assert_eq!(w.now - failed_at, Duration::from_secs(1));

    let fetched_at = w.now;
    w.fetched(Ok(JWKS.as_bytes()));
    assert_eq!(w.key_events().last(), Some(&None), "fetched");
    let limit = w.now - w.start + Duration::from_secs(120);
    w.run(limit, |w| w.origin.key_fetches.len() == 3);
    assert_eq!(
        w.now - fetched_at,
        Duration::from_secs(60),
        "refreshed a minute later"
    );
}

#[test]
fn a_body_that_is_not_a_key_set_is_a_failed_fetch() {
    let mut w = access_world(2);
    w.flush();
    w.fetched(Ok(b"<html>login</html>"));
    assert!(w.key_events()[0].is_some());
}
