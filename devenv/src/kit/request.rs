//! Which requests a fault rule applies to, or a log count counts.

use std::{fmt, sync::Arc};

use axum::http::Method;

/// A pattern over a request's method and path (never its query or body). The default,
/// [`RequestMatch::any`], matches every request.
#[derive(Clone, Default)]
pub struct RequestMatch {
    method: Option<Method>,
    path: PathMatch,
    writes_only: bool,
}

#[derive(Clone, Default)]
enum PathMatch {
    #[default]
    Any,
    Exact(String),
    /// The prefix itself and everything below it, segment-wise.
    Under(String),
    Where(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl RequestMatch {
    pub fn any() -> Self {
        Self::default()
    }

    /// Only requests with this method.
    pub fn method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    /// Only this exact path.
    pub fn path(mut self, path: &str) -> Self {
        self.path = PathMatch::Exact(path.to_owned());
        self
    }

    /// Only `prefix` and the paths below it: `/api` matches `/api` and `/api/x`, not `/apix`.
    pub fn under(mut self, prefix: &str) -> Self {
        self.path = PathMatch::Under(prefix.trim_end_matches('/').to_owned());
        self
    }

    /// Only paths the predicate accepts.
    pub fn path_where(mut self, predicate: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.path = PathMatch::Where(Arc::new(predicate));
        self
    }

    /// Only requests that may change state: POST, PUT, PATCH and DELETE.
    pub fn writes(mut self) -> Self {
        self.writes_only = true;
        self
    }

    pub fn matches(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && (!self.writes_only || is_write(method))
            && match &self.path {
                PathMatch::Any => true,
                PathMatch::Exact(exact) => path == exact,
                PathMatch::Under(prefix) => path.strip_prefix(prefix.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
                PathMatch::Where(predicate) => predicate(path),
            }
    }
}

impl fmt::Debug for RequestMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let method = self.method.as_ref().map_or("*", Method::as_str);
        let path = match &self.path {
            PathMatch::Any => "*".to_owned(),
            PathMatch::Exact(exact) => exact.clone(),
            PathMatch::Under(prefix) => format!("{prefix}/**"),
            PathMatch::Where(_) => "<predicate>".to_owned(),
        };
        let writes = if self.writes_only { " (writes)" } else { "" };
        write!(f, "{method} {path}{writes}")
    }
}

/// POST, PUT, PATCH and DELETE: the methods that may change what an API stores.
pub fn is_write(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_exactly_below_a_prefix_or_by_predicate() {
        let under = RequestMatch::any().under("/api/");
        assert!(under.matches(&Method::GET, "/api"));
        assert!(under.matches(&Method::GET, "/api/connectors/1"));
        assert!(!under.matches(&Method::GET, "/apix"));
        assert!(!under.matches(&Method::GET, "/oidc/token"));

        let exact = RequestMatch::any().path("/oauth/token");
        assert!(exact.matches(&Method::POST, "/oauth/token"));
        assert!(!exact.matches(&Method::POST, "/oauth/token/x"));

        let predicate = RequestMatch::any().path_where(|p| p.ends_with("/token"));
        assert!(predicate.matches(&Method::POST, "/t/oauth2/v2.0/token"));
        assert!(!predicate.matches(&Method::POST, "/t/v2.0/.well-known/openid-configuration"));
        assert!(RequestMatch::any().matches(&Method::DELETE, "/anything"));
    }

    #[test]
    fn methods_and_writes_narrow_a_match() {
        let post = RequestMatch::any().method(Method::POST).under("/api");
        assert!(post.matches(&Method::POST, "/api/x"));
        assert!(!post.matches(&Method::GET, "/api/x"));

        let writes = RequestMatch::any().writes();
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(writes.matches(&method, "/x"), "{method}");
        }
        assert!(!writes.matches(&Method::GET, "/x"));
        assert!(!writes.matches(&Method::HEAD, "/x"));
        assert_eq!(format!("{:?}", RequestMatch::any().method(Method::PUT).under("/api").writes()), "PUT /api/** (writes)");
    }
}
