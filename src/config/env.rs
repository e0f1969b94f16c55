//! Reading environment variables: empty counts as unset, and every error names its variable.

/// A configuration problem, naming the variable at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

pub(super) fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

pub(super) struct Env<F: Fn(&str) -> Option<String>>(pub(super) F);

impl<F: Fn(&str) -> Option<String>> Env<F> {
    /// A variable's value; empty counts as unset.
    pub(super) fn get(&self, var: &str) -> Option<String> {
        (self.0)(var)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    pub(super) fn parse<T: std::str::FromStr>(
        &self,
        var: &'static str,
        default: T,
        what: &str,
    ) -> Result<T, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| err(var, format!("'{v}' is not {what}"))),
        }
    }

    pub(super) fn flag(&self, var: &'static str) -> Result<bool, ConfigError> {
        match self.get(var).map(|v| v.to_ascii_lowercase()) {
            None => Ok(false),
            Some(v) if ["true", "1", "yes"].contains(&v.as_str()) => Ok(true),
            Some(v) if ["false", "0", "no"].contains(&v.as_str()) => Ok(false),
            Some(v) => Err(err(var, format!("'{v}' is not true or false"))),
        }
    }

    pub(super) fn range<T>(
        &self,
        var: &'static str,
        default: T,
        lo: T,
        hi: T,
    ) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let v = self.parse(var, default, "a number")?;
        if v < lo || v > hi {
            return Err(err(var, format!("{v} is outside {lo}..={hi}")));
        }
        Ok(v)
    }

    pub(super) fn url(&self, var: &'static str) -> Result<Option<url::Url>, ConfigError> {
        self.get(var)
            .map(|v| url::Url::parse(&v).map_err(|e| err(var, format!("not a URL: {e}"))))
            .transpose()
    }
}
