//! [`Credentials`] and the hook that supplies them before every connection attempt.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
type CredentialsFuture = Pin<Box<dyn Future<Output = Result<Credentials, BoxError>> + Send>>;
pub(crate) type CredentialsHook = Arc<dyn Fn() -> CredentialsFuture + Send + Sync>;

/// Credentials for one connection attempt, returned by the hook given to
/// [`ListenerBuilder::credentials`](crate::ListenerBuilder::credentials).
///
/// A `String` (or `&str`) converts into `Credentials` holding just a password, so a hook
/// can return the password (for example a fresh cloud IAM token) directly. `Debug`
/// never shows the password.
///
/// ```
/// use pglisten::Credentials;
///
/// let token: Credentials = "short-lived-token".into();
/// let rotated = Credentials::password("s3cret").user("app_v2");
/// assert_eq!(format!("{rotated:?}"), r#"Credentials { user: Some("app_v2"), password: "<redacted>" }"#);
/// # let _ = token;
/// ```
#[derive(Clone)]
pub struct Credentials {
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
}

impl Credentials {
    /// Credentials with this password; the user name comes from the connection string.
    ///
    /// ```
    /// let credentials = pglisten::Credentials::password("s3cret");
    /// # let _ = credentials;
    /// ```
    pub fn password(password: impl Into<String>) -> Self {
        Credentials {
            user: None,
            password: Some(password.into()),
        }
    }

    /// Also replaces the user name of the connection string (for example when a secret
    /// store hands out a new user with each lease).
    ///
    /// ```
    /// let credentials = pglisten::Credentials::password("s3cret").user("v-app-3f9a");
    /// # let _ = credentials;
    /// ```
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }
}

impl From<String> for Credentials {
    fn from(password: String) -> Self {
        Credentials::password(password)
    }
}

impl From<&str> for Credentials {
    fn from(password: &str) -> Self {
        Credentials::password(password)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field(
                "password",
                &self.password.as_ref().map_or("<none>", |_| "<redacted>"),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_hides_the_password() {
        let c = Credentials::password("s3cret").user("bob");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("bob"));
    }
}
