//! What the API takes from an HTTP request besides its credentials: the client, and the refresh
//! token a browser keeps in a cookie.

/// The cookie a browser client keeps its refresh token in.
pub const REFRESH_COOKIE: &str = "cloudsync_refresh";

/// What resolvers may need of the HTTP request besides its credentials.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    pub client: cloudsync_identity::sessions::Client,
    /// The refresh token a browser sent in [`REFRESH_COOKIE`].
    pub refresh_cookie: Option<String>,
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

/// A `Set-Cookie` value that gives the browser `refresh_token` for `max_age_seconds` (0: removes
/// it). Only sent over HTTPS (browsers treat localhost as secure), never readable by scripts, never
/// sent along with another site's requests, and only to the GraphQL endpoint.
pub fn refresh_cookie(refresh_token: &str, max_age_seconds: i64) -> String {
    format!("{REFRESH_COOKIE}={refresh_token}; Max-Age={max_age_seconds}; Path=/graphql; Secure; HttpOnly; SameSite=Strict")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_by_name_and_set_with_every_protection() {
        let mut headers = axum::http::HeaderMap::new();
        headers.append(
            axum::http::header::COOKIE,
            "a=1; cloudsync_refresh=csr1.x.y".parse().expect("header"),
        );
        headers.append(axum::http::header::COOKIE, "b=2".parse().expect("header"));
        assert_eq!(cookie(&headers, REFRESH_COOKIE).as_deref(), Some("csr1.x.y"));
        assert_eq!(cookie(&headers, "b").as_deref(), Some("2"));
        assert_eq!(cookie(&headers, "c"), None);
        let set = refresh_cookie("t", 60);
        for part in [
            "cloudsync_refresh=t",
            "Max-Age=60",
            "Path=/graphql",
            "Secure",
            "HttpOnly",
            "SameSite=Strict",
        ] {
            assert!(set.split("; ").any(|p| p == part), "{part} in {set}");
        }
    }
}
