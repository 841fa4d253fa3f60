//! The built-in SCM rule tables, as data (shared/reference/scm-allowlists.md).
//!
//! One row per path template: `(methods, template, base, gate)`. Adding an endpoint is adding one
//! row. `Base::Api` rows are joined to the SCM's `base_url`, `Base::Web` rows to its web root
//! (git smart-HTTP: the base without its API suffix), `Base::Vsaex` rows to the Azure DevOps
//! `vsaex.dev.azure.com` variant of the base. `Gate::Code` rows exist only with
//! `allow_code_access = true`. GitHub rows containing `/repos/:owner/:repo` or `/repos/:org/:repo`
//! are additionally generated with `/repositories/:id(\d+)` in their place (see `scm.rs`).
//!
//! Invariant: every template is a valid pattern path (checked by a unit test that compiles every
//! table) and contains only `:name` / `*` / `{:name/}+` syntax.

/// Which base URL a row is relative to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Base {
    /// The SCM's `base_url` (its path kept).
    Api,
    /// The web root: the `base_url` without its API suffix (`/api/v3`, `/api/v4`,
    /// `/rest/api/<version>`), e.g. `https://h/gitlab` for `https://h/gitlab/api/v4`. The
    /// reference data says "root" (`scheme://host`); the web root keeps the instance's path so
    /// that two instances on one host keep apart (see `scm.rs`).
    Web,
    /// Azure DevOps: `base_url` with `dev.azure.com` replaced by `vsaex.dev.azure.com`.
    Vsaex,
}

/// When a row is generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Always.
    Always,
    /// Only with `allow_code_access = true`.
    Code,
}

/// `(methods, path template, base, gate)`.
pub(crate) type Row = (&'static [&'static str], &'static str, Base, Gate);

const GET: &[&str] = &["GET"];
const POST: &[&str] = &["POST"];
const PUT: &[&str] = &["PUT"];
const PATCH: &[&str] = &["PATCH"];
const DELETE: &[&str] = &["DELETE"];
const GET_PUT: &[&str] = &["GET", "PUT"];
const GET_POST: &[&str] = &["GET", "POST"];
const GET_PATCH: &[&str] = &["GET", "PATCH"];
const GET_POST_PUT: &[&str] = &["GET", "POST", "PUT"];
const POST_PATCH: &[&str] = &["POST", "PATCH"];
const PUT_DELETE: &[&str] = &["PUT", "DELETE"];
const DELETE_PATCH: &[&str] = &["DELETE", "PATCH"];

use Base::{Api, Vsaex, Web};
use Gate::{Always, Code};

/// GitHub (Enterprise Server or github.com); base e.g. `https://ghe.example.com/api/v3`.
#[rustfmt::skip]
pub(crate) const GITHUB: &[Row] = &[
    (GET, "/repos/:owner/:repo", Api, Always),
    (GET, "/user", Api, Always),
    (GET, "/user/repos", Api, Always),
    (GET, "/user/memberships/orgs/:org", Api, Always),
    (GET, "/repos/:owner/:repo/pulls", Api, Always),
    (POST, "/repos/:owner/:repo/pulls/:number/comments", Api, Always),
    (GET, "/repos/:owner/:repo/pulls/comments/:comment_id/reactions", Api, Always),
    (GET, "/repos/:owner/:repo/branches", Api, Always),
    (GET, "/repos/:owner/:repo/branches/:branch", Api, Always),
    (POST, "/repos/:owner/:repo/issues/:number/comments", Api, Always),
    (GET, "/organizations", Api, Always),
    (GET, "/orgs/:org", Api, Always),
    (GET, "/orgs/:org/installation", Api, Always),
    (GET, "/orgs/:org/repos", Api, Always),
    (GET, "/installation/repositories", Api, Always),
    (GET, "/users/:user/installation", Api, Always),
    (GET, "/users/:user/installation/repositories", Api, Always),
    (POST, "/app-manifests/:code/conversions", Api, Always),
    (GET, "/app", Api, Always),
    (POST, "/app/installations/:id/access_tokens", Api, Always),
    (PUT, "/repos/:org/:repo/actions/secrets/SEMGREP_APP_TOKEN", Api, Always),
    (GET, "/repos/:org/:repo/actions/secrets/public-key", Api, Always),
    (GET_PUT, "/repos/:owner/:repo/contents/.github/workflows/semgrep.yml", Api, Always),
    (GET, "/repos/:owner/:repo/installation", Api, Always),
    (GET_PATCH, "/app/hook/config", Api, Always),
    (GET, "/app/hook/deliveries", Api, Always),
    (GET, "/app/hook/deliveries/:delivery_id", Api, Always),
    (POST, "/repos/:owner/:repo/check-runs", Api, Always),
    (PATCH, "/repos/:owner/:repo/check-runs/:check_run_id", Api, Always),
    (GET, "/repos/:owner/:repo/compare/:basehead", Api, Always),
    (PATCH, "/repos/:owner/:repo/pulls/:number/comments/:comment_id", Api, Always),
    (PATCH, "/repos/:owner/:repo/pulls/comments/:comment_id", Api, Always),
    (POST, "/repos/:owner/:repo/pulls/:number/comments/:comment_id/replies", Api, Always),
    (GET, "/orgs/:org/teams", Api, Always),
    (GET, "/orgs/:org/teams/:team_slug/members", Api, Always),
    (GET, "/orgs/:org/members", Api, Always),
    (GET, "/users/:username", Api, Always),
    (GET_POST, "/orgs/:org/hooks", Api, Always),
    (DELETE_PATCH, "/orgs/:org/hooks/:hook_id", Api, Always),
    (GET, "/orgs/:org/hooks/:hook_id/deliveries", Api, Always),
    (GET, "/orgs/:org/hooks/:hook_id/deliveries/:delivery_id", Api, Always),
    (POST, "/repos/:owner/:repo/statuses/:commit", Api, Always),
    (GET, "/repos/:owner/:repo/collaborators/:username/permission", Api, Always),
    (POST, "/repos/:owner/:repo/git/refs", Api, Always),
    // allow_code_access
    (GET, "/repos/:owner/:repo/contents", Api, Code),
    (GET, "/repos/:owner/:repo/contents/*", Api, Code),
    (GET, "/repos/:owner/:repo/commits", Api, Code),
    (GET, "/:owner/:repo/info/refs", Web, Code),
    (POST, "/:owner/:repo/git-upload-pack", Web, Code),
    (POST, "/:owner/:repo/git-receive-pack", Web, Code),
    (GET, "/repos/:owner/:repo/git/ref/*", Api, Code),
    (GET, "/repos/:owner/:repo/git/commits/:sha", Api, Code),
    (POST, "/repos/:owner/:repo/git/blobs", Api, Code),
    (POST, "/repos/:owner/:repo/git/trees", Api, Code),
    (POST, "/repos/:owner/:repo/git/commits", Api, Code),
    (PATCH, "/repos/:owner/:repo/git/refs/*", Api, Code),
    (POST, "/repos/:owner/:repo/pulls", Api, Code),
];

/// GitLab; base e.g. `https://gitlab.example.com/api/v4`. `:project` is a numeric id or the
/// `%2F`-encoded full path, one segment either way.
#[rustfmt::skip]
pub(crate) const GITLAB: &[Row] = &[
    (GET_POST_PUT, "/groups/:namespace/hooks", Api, Always),
    (DELETE, "/groups/:namespace/hooks/:hook", Api, Always),
    (GET, "/groups/:namespace/members/all", Api, Always),
    (GET, "/groups/:namespace/members/all/:user", Api, Always),
    (GET, "/namespaces/:namespace", Api, Always),
    (GET, "/projects/:project", Api, Always),
    (POST, "/projects/:project/hooks", Api, Always),
    (DELETE, "/projects/:project/hooks/:hook", Api, Always),
    (GET, "/projects/:project/members/all/:user", Api, Always),
    (GET, "/projects/:project/merge_requests", Api, Always),
    (GET, "/projects/:project/merge_requests/:number/versions", Api, Always),
    (GET, "/:entity_type/:namespace/projects", Api, Always),
    (GET, "/projects/:project/repository/branches", Api, Always),
    (GET, "/projects/:project/repository/branches/:branch", Api, Always),
    (GET_POST, "/projects/:project/merge_requests/:number/discussions", Api, Always),
    (POST, "/projects/:project/merge_requests/:number/discussions/:discussion/notes", Api, Always),
    (PUT, "/projects/:project/merge_requests/:number/discussions/:discussion/notes/:note", Api, Always),
    (PUT, "/projects/:project/merge_requests/:number/discussions/:discussion", Api, Always),
    (GET, "/projects/:project/merge_requests/:number/discussions/:discussion/notes/:note/award_emoji", Api, Always),
    (GET, "/personal_access_tokens/self", Api, Always),
    // allow_code_access
    (GET, "/projects/:project/repository/files/*", Api, Code),
    (POST, "/projects/:project/repository/branches", Api, Code),
    (GET_POST, "/projects/:project/repository/commits", Api, Code),
    (GET, "/projects/:project/repository/compare", Api, Code),
    (GET, "/projects/:project/repository/merge_base", Api, Code),
    (POST, "/projects/:project/statuses/:commit", Api, Code),
    (GET, "/{:namespace/}+:project/info/refs", Web, Code),
    (POST, "/{:namespace/}+:project/git-upload-pack", Web, Code),
    (POST, "/{:namespace/}+:project/git-receive-pack", Web, Code),
    (POST, "/projects/:project/merge_requests", Api, Code),
];

/// Bitbucket Data Center; base e.g. `https://bitbucket.example.com/rest/api/latest`.
/// `GET /admin/groups` is deliberately absent (too broad for the default list).
#[rustfmt::skip]
pub(crate) const BITBUCKET: &[Row] = &[
    (GET, "/application-properties", Api, Always),
    (GET, "/projects/:project", Api, Always),
    (GET, "/projects/:project/repos", Api, Always),
    (GET, "/projects/:project/repos/:repo", Api, Always),
    (GET, "/projects/:project/repos/:repo/default-branch", Api, Always),
    (GET, "/projects/:project/repos/:repo/branches", Api, Always),
    (GET, "/projects/:project/repos/:repo/pull-requests", Api, Always),
    (POST, "/projects/:project/repos/:repo/pull-requests/:number/comments", Api, Always),
    (GET_PUT, "/projects/:project/repos/:repo/pull-requests/:number/comments/:comment", Api, Always),
    (POST, "/projects/:project/repos/:repo/pull-requests/:number/blocker-comments", Api, Always),
    (GET_POST, "/projects/:project/repos/:repo/webhooks", Api, Always),
    (GET_POST, "/projects/:project/webhooks", Api, Always),
    (PUT_DELETE, "/projects/:project/repos/:repo/webhooks/:webhook", Api, Always),
    (PUT_DELETE, "/projects/:project/webhooks/:webhook", Api, Always),
    // allow_code_access
    (GET_PUT, "/projects/:project/repos/:repo/browse/*", Api, Code),
    (POST, "/projects/:project/repos/:repo/commits/:commit/builds", Api, Code),
    (GET, "/scm/:project/:repo/info/refs", Web, Code),
    (POST, "/scm/:project/:repo/git-upload-pack", Web, Code),
    (GET, "/projects/:project/repos/:repo/commits", Api, Code),
    (POST, "/projects/:project/repos/:repo/branches", Api, Code),
    (POST, "/projects/:project/repos/:repo/pull-requests", Api, Code),
];

/// Azure DevOps (Services or Server); base e.g. `https://dev.azure.com` or a collection URL.
/// `...` in the reference stands for `/:namespace/:project/_apis/git/repositories`. Push through
/// git smart-HTTP is not allowed (autofix uses the pushes API).
#[rustfmt::skip]
pub(crate) const AZUREDEVOPS: &[Row] = &[
    (GET, "/:namespace/_apis/connectionData", Api, Always),
    (GET, "/:namespace/_apis/projects/:project", Api, Always),
    (GET, "/:namespace/:project/_apis/git/repositories", Api, Always),
    (GET, "/:namespace/:project/_apis/git/repositories/:repo", Api, Always),
    (GET_POST, "/:namespace/:project/_apis/git/repositories/:repo/refs", Api, Always),
    (GET, "/:namespace/:project/_apis/git/repositories/:repo/pullRequests", Api, Always),
    (GET, "/:namespace/:project/_apis/git/repositories/:repo/pullRequests/:number/iterations", Api, Always),
    (GET, "/:namespace/:project/_apis/git/repositories/:repo/pullRequests/:number/iterations/:iterationId/changes", Api, Always),
    (POST_PATCH, "/:namespace/:project/_apis/git/repositories/:repo/pullRequests/:number/threads", Api, Always),
    (POST, "/:namespace/:project/_apis/git/repositories/:repo/pullRequests/:number/threads/:threadId/comments", Api, Always),
    (PATCH, "/:namespace/:project/_apis/git/repositories/:repo/pullRequests/:number/threads/:threadId/comments/:commentId", Api, Always),
    (GET_POST, "/:namespace/_apis/hooks/subscriptions", Api, Always),
    // Older clients: project-scoped subscriptions.
    (GET_POST_PUT, "/:namespace/:project/_apis/hooks/subscriptions", Api, Always),
    (PUT_DELETE, "/:namespace/_apis/hooks/subscriptions/:subscriptionId", Api, Always),
    (GET, "/:namespace/_apis/groupentitlements", Vsaex, Always),
    // allow_code_access
    (GET, "/:namespace/:project/_apis/git/repositories/:repo/items", Api, Code),
    (POST, "/:namespace/:project/_apis/git/repositories/:repo/commits/:commit/statuses", Api, Code),
    (GET, "/:namespace/:project/_git/:repo/info/refs", Api, Code),
    (POST, "/:namespace/:project/_git/:repo/git-upload-pack", Api, Code),
    (GET, "/:namespace/:project/_apis/git/pullrequests/:number", Api, Code),
    (POST, "/:namespace/:project/_apis/git/repositories/:repo/pushes", Api, Code),
    (POST, "/:namespace/:project/_apis/git/repositories/:repo/pullRequests", Api, Code),
];
