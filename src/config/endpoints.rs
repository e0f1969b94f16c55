//! The Azure endpoints and identity settings, each checked on its own: a misconfigured
//! deployment fails at start-up with the variable at fault, not at the first request.

use secrecy::SecretString;

use super::env::{ConfigError, Env, err};

/// `SOPHIA_COSMOS_ENDPOINT`, required with `SOPHIA_STORE=cosmos`.
pub(super) fn cosmos_endpoint<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<url::Url, ConfigError> {
    let Some(raw) = env.get("SOPHIA_COSMOS_ENDPOINT") else {
        return Err(err(
            "SOPHIA_COSMOS_ENDPOINT",
            "is required with SOPHIA_STORE=cosmos (https://<account>.documents.azure.com:443/)",
        ));
    };
    match url::Url::parse(&raw) {
        Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && is_loopback_url(&u)) => Ok(u),
        _ => Err(err(
            "SOPHIA_COSMOS_ENDPOINT",
            "must be an https URL (http only for a loopback emulator)",
        )),
    }
}

/// `SOPHIA_KEYVAULT_URL`, required with `SOPHIA_SECRETS=keyvault`: the vault's base URL.
pub(super) fn keyvault_url<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<(), ConfigError> {
    match env.get("SOPHIA_KEYVAULT_URL") {
        None => {
            return Err(err(
                "SOPHIA_KEYVAULT_URL",
                "is required with SOPHIA_SECRETS=keyvault (https://<vault>.vault.azure.net)",
            ));
        }
        Some(raw) => match url::Url::parse(&raw) {
            Ok(u)
                if (u.scheme() == "https" || (u.scheme() == "http" && is_loopback_url(&u)))
                    && u.path() == "/"
                    && u.query().is_none() => {}
            _ => {
                return Err(err(
                    "SOPHIA_KEYVAULT_URL",
                    "must be the vault's https base URL, e.g. https://<vault>.vault.azure.net (http only for a loopback stand-in)",
                ));
            }
        },
    }
    Ok(())
}

/// `SOPHIA_REFRESH_QUEUE` / `SOPHIA_REFRESH_QUEUE_URL`: the Storage queue of refresh jobs, if
/// any (its URL may carry a SAS, so it is kept secret).
pub(super) fn refresh_queue_url<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<Option<SecretString>, ConfigError> {
    Ok(match env.get("SOPHIA_REFRESH_QUEUE").as_deref() {
        None | Some("local") => None,
        Some("storage") => match env.get("SOPHIA_REFRESH_QUEUE_URL") {
            None => {
                return Err(err(
                    "SOPHIA_REFRESH_QUEUE_URL",
                    "is required with SOPHIA_REFRESH_QUEUE=storage (https://<account>.queue.core.windows.net/<queue>, optionally ?<SAS>)",
                ));
            }
            Some(raw) => match url::Url::parse(&raw) {
                Ok(u)
                    if (u.scheme() == "https" || (u.scheme() == "http" && is_loopback_url(&u)))
                        && u.path().trim_matches('/').len() >= 3 =>
                {
                    Some(SecretString::from(raw))
                }
                _ => {
                    return Err(err(
                        "SOPHIA_REFRESH_QUEUE_URL",
                        "must be the queue's https URL, e.g. https://<account>.queue.core.windows.net/sophia-refresh (http only on loopback)",
                    ));
                }
            },
        },
        Some(_) => {
            return Err(err("SOPHIA_REFRESH_QUEUE", "must be local or storage"));
        }
    })
}

/// How admin tokens are verified.
pub(super) struct AdminAuth {
    pub jwt_secret: Option<String>,
    pub jwks_url: Option<url::Url>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// `SOPHIA_ADMIN_JWT_SECRET`, `SOPHIA_ADMIN_JWKS_URL`, `SOPHIA_ADMIN_ISSUER`,
/// `SOPHIA_ADMIN_AUDIENCE`.
pub(super) fn admin_auth<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<AdminAuth, ConfigError> {
    let admin_jwt_secret = env.get("SOPHIA_ADMIN_JWT_SECRET");
    if let Some(s) = &admin_jwt_secret
        && s.len() < 32
    {
        return Err(err(
            "SOPHIA_ADMIN_JWT_SECRET",
            "must be at least 32 characters",
        ));
    }
    let admin_jwks_url = env.url("SOPHIA_ADMIN_JWKS_URL")?;
    if let Some(u) = &admin_jwks_url {
        let loopback = matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        if u.scheme() != "https" && !(u.scheme() == "http" && loopback) {
            return Err(err(
                "SOPHIA_ADMIN_JWKS_URL",
                "must be https (http only for a loopback host)",
            ));
        }
    }
    let admin_issuer = env.get("SOPHIA_ADMIN_ISSUER");
    let admin_audience = env.get("SOPHIA_ADMIN_AUDIENCE");
    if admin_jwks_url.is_some() {
        // An identity provider's keys sign the tokens of every one of its tenants and apps
        // (Entra ID signs all of them with the same keys): without a pinned issuer and
        // audience, anyone with an account there could mint a PLATFORM_ADMIN token.
        if admin_issuer.is_none() {
            return Err(err(
                "SOPHIA_ADMIN_ISSUER",
                "is required with SOPHIA_ADMIN_JWKS_URL: the identity provider's issuer \
                 (e.g. https://login.microsoftonline.com/<tenant id>/v2.0), or any account \
                 of that provider could mint admin tokens",
            ));
        }
        if admin_audience.is_none() {
            return Err(err(
                "SOPHIA_ADMIN_AUDIENCE",
                "is required with SOPHIA_ADMIN_JWKS_URL: the application id URI or client id \
                 admin tokens are issued for (e.g. api://sophia-admin)",
            ));
        }
    }
    Ok(AdminAuth {
        jwt_secret: admin_jwt_secret,
        jwks_url: admin_jwks_url,
        issuer: admin_issuer,
        audience: admin_audience,
    })
}

/// `SOPHIA_PUBLIC_URL`: required, and https, once SOPHIA runs on Azure.
pub(super) fn check_public_url(
    public_url: Option<&url::Url>,
    on_azure: bool,
) -> Result<(), ConfigError> {
    match public_url {
        None if on_azure => {
            return Err(err(
                "SOPHIA_PUBLIC_URL",
                "is required outside local development (under the Functions host or on an \
                 Azure backend): the https base URL clients reach SOPHIA at; the token issuer \
                 and the discovery document are built from it, never from request headers",
            ));
        }
        Some(u) if u.query().is_some() || u.fragment().is_some() || !u.username().is_empty() => {
            return Err(err(
                "SOPHIA_PUBLIC_URL",
                "must be a base URL without query, fragment or user info",
            ));
        }
        Some(u)
            if u.scheme() != "https"
                && on_azure
                && !matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")) =>
        {
            return Err(err(
                "SOPHIA_PUBLIC_URL",
                "must be https outside local development (http only for localhost)",
            ));
        }
        _ => {}
    }
    Ok(())
}

pub(super) fn is_loopback_url(u: &url::Url) -> bool {
    matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"))
}
