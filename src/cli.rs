//! Command line: `sophia [serve]`, `sophia admin-token …`, `sophia --version`.

use crate::auth::admin::{ROLE_ADMIN, ROLE_PLATFORM_ADMIN};
use crate::config::Settings;
use crate::domain::TenantId;

pub const USAGE: &str = "\
usage:
  sophia [serve]                       run the service (configuration from the environment)
  sophia admin-token --role ADMIN|PLATFORM_ADMIN [--company ID] [--ttl SECONDS]
                                       print an HS256 admin token for local development
  sophia simulator [--port N] [--key KEY]... [--deployment NAME]... [--latency-ms N] [--chunk-delay-ms N]
                                       run the local Azure OpenAI simulator (default port 8090)
  sophia --version | --help";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Serve,
    AdminToken {
        role: String,
        company: Option<TenantId>,
        ttl_secs: u64,
    },
    Simulator {
        port: u16,
        config: crate::dev::simulator::SimConfig,
    },
    Version,
    Help,
}

/// Parses arguments (without the program name).
pub fn parse(args: &[String]) -> Result<Command, String> {
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        None | Some("serve") => Ok(Command::Serve),
        Some("--version" | "-V" | "version") => Ok(Command::Version),
        Some("--help" | "-h" | "help") => Ok(Command::Help),
        Some("admin-token") => {
            let (mut role, mut company, mut ttl) = (None, None, 3600u64);
            while let Some(flag) = it.next() {
                let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
                match flag.as_str() {
                    "--role" => role = Some(value.clone()),
                    "--company" => {
                        company =
                            Some(TenantId::parse(value).map_err(|e| format!("--company: {e}"))?)
                    }
                    "--ttl" => {
                        ttl = value
                            .parse()
                            .ok()
                            .filter(|t| (60..=31 * 86_400).contains(t))
                            .ok_or("--ttl must be seconds from 60 to 2678400")?
                    }
                    other => return Err(format!("unknown option {other}")),
                }
            }
            let role = role.ok_or("--role is required")?;
            if role != ROLE_ADMIN && role != ROLE_PLATFORM_ADMIN {
                return Err("--role must be ADMIN or PLATFORM_ADMIN".into());
            }
            if role == ROLE_ADMIN && company.is_none() {
                return Err("--role ADMIN needs --company".into());
            }
            Ok(Command::AdminToken {
                role,
                company,
                ttl_secs: ttl,
            })
        }
        Some("simulator") => {
            let mut port = 8090u16;
            let mut config = crate::dev::simulator::SimConfig::default();
            while let Some(flag) = it.next() {
                let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
                let millis = || {
                    value
                        .parse::<u64>()
                        .map(std::time::Duration::from_millis)
                        .map_err(|_| format!("{flag} takes milliseconds"))
                };
                match flag.as_str() {
                    "--port" => {
                        port = value
                            .parse()
                            .map_err(|_| "--port takes a port number".to_owned())?
                    }
                    "--key" => config.keys.push(value.clone()),
                    "--deployment" => config.deployments.push(value.clone()),
                    "--latency-ms" => config.latency = millis()?,
                    "--chunk-delay-ms" => config.chunk_delay = millis()?,
                    other => return Err(format!("unknown option {other}")),
                }
            }
            Ok(Command::Simulator { port, config })
        }
        Some(other) => Err(format!("unknown command '{other}'")),
    }
}

/// Mints an admin token with the same configuration the server uses.
pub fn admin_token(
    settings: &Settings,
    role: &str,
    company: Option<&TenantId>,
    ttl_secs: u64,
) -> anyhow::Result<String> {
    let verifier = crate::startup::admin_verifier(settings, reqwest::Client::new())?;
    verifier.mint(role, company, ttl_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_commands() {
        assert_eq!(parse(&[]).unwrap(), Command::Serve);
        assert_eq!(parse(&args("serve")).unwrap(), Command::Serve);
        assert_eq!(
            parse(&args("admin-token --role ADMIN --company acme --ttl 120")).unwrap(),
            Command::AdminToken {
                role: "ADMIN".into(),
                company: Some(TenantId::parse("acme").unwrap()),
                ttl_secs: 120
            }
        );
        assert!(parse(&args("admin-token --role ADMIN")).is_err());
        assert!(parse(&args("admin-token --role ROOT")).is_err());
        assert!(parse(&args("admin-token --role PLATFORM_ADMIN --ttl 5")).is_err());
        assert!(parse(&args("frobnicate")).is_err());
        match parse(&args(
            "simulator --port 9001 --key k1 --key k2 --latency-ms 5",
        ))
        .unwrap()
        {
            Command::Simulator { port, config } => {
                assert_eq!(port, 9001);
                assert_eq!(config.keys, ["k1", "k2"]);
                assert_eq!(config.latency, std::time::Duration::from_millis(5));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&args("simulator --latency-ms soon")).is_err());
    }
}
