//! The HTTP edge shared by every route: request extractors that answer bad input with
//! problem+json, and the request id.

pub mod extract;
pub mod openai;
pub mod request_id;

/// The admin API's own prefix (the seed's contract, for APIM and hosting outside Functions).
pub const ADMIN_PREFIX: &str = "/admin/";
/// The same admin API under a prefix the Azure Functions host accepts: it reserves every HTTP
/// route that starts with `admin` (and `runtime`) for its own API, so `functions/*` routes
/// the admin functions here.
pub const FUNCTIONS_ADMIN_PREFIX: &str = "/manage/";
