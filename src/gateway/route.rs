//! What a front-door request is for, from its request target alone.
//!
//! * `/t/<tenant>/proxy/<absolute URL>` → `/proxy/<absolute URL>` on one of the tenant's brokers;
//! * `/t/<tenant>/healthcheck` → `/healthcheck` on one of them (the tenant is served at all);
//! * anything else is not found.
//!
//! The broker's target is a slice of the front door's, byte for byte: the gateway neither
//! decodes nor canonicalises the URL, so the broker's allowlist decides on exactly what the
//! vendor sent. A tenant name is matched literally (names are plain path segments, see
//! [`crate::config::gateway`]); `%61cme` is not `acme`.

/// Where a front-door request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// To one of `tenant`'s brokers, with `target` as its request target.
    Tenant { tenant: &'a str, target: &'a str },
    /// Nothing the gateway serves.
    NotFound,
}

/// Routes the request target `target` (origin form, as on the request line).
pub fn route(target: &str) -> Route<'_> {
    let Some(rest) = target.strip_prefix("/t/") else {
        return Route::NotFound;
    };
    let Some(slash) = rest.find('/') else {
        return Route::NotFound;
    };
    let (tenant, broker_target) = rest.split_at(slash);
    let forwarded = broker_target.starts_with("/proxy/")
        || broker_target == "/healthcheck"
        || broker_target.starts_with("/healthcheck?");
    if tenant.is_empty() || !forwarded {
        return Route::NotFound;
    }
    Route::Tenant {
        tenant,
        target: broker_target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_routes_keep_the_broker_target_byte_for_byte() {
        assert_eq!(
            route("/t/acme/proxy/https://ghe.example.com/api/v3/repos/a%2Fb?x=1"),
            Route::Tenant {
                tenant: "acme",
                target: "/proxy/https://ghe.example.com/api/v3/repos/a%2Fb?x=1"
            }
        );
        assert_eq!(
            route("/t/acme/healthcheck"),
            Route::Tenant {
                tenant: "acme",
                target: "/healthcheck"
            }
        );
    }

    #[test]
    fn anything_else_is_not_found() {
        for t in [
            "/",
            "/t/",
            "/t/acme",
            "/t/acme/",
            "/t//proxy/https://x",
            "/t/acme/proxyhttps://x",
            "/t/acme/healthcheckx",
            "/t/acme/admin",
            "/proxy/https://ghe.example.com/",
            "/T/acme/proxy/https://x",
            "*",
            "https://gw/t/acme/proxy/https://x",
        ] {
            assert_eq!(route(t), Route::NotFound, "{t}");
        }
    }
}
