//! The operator's web console, served by the admin endpoint at `/` when
//! `[admin.console]` is set (docs/console.md): targets with their lag and
//! state, a target's partitions and recent errors, dead letters to filter,
//! read, replay and purge, and the live relays.
//!
//! Server-rendered HTML (askama templates in `host/templates/console/`,
//! escaped by default), compiled into the binary with its stylesheet; no
//! script is needed. Access: [`session`]. Every replay and purge is written
//! to the log (`audit` events) with who asked (session or bearer), what and
//! how many.

pub mod session;
mod view;

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::admin::AdminState;
use crate::dead_letters::{Action, Selection};
use crate::storage::{DeadLetterFilter, DeadLetterKey};
use session::{Access, COOKIE, Caller};
use view::{DeadLetterRow, Overview, TargetRow};

/// Dead letters on one page of the list.
const PAGE: u32 = 50;

/// What the console's handlers share.
#[derive(Clone)]
pub struct Console {
    pub admin: AdminState,
    pub access: Access,
}

/// The console's routes, to merge into the admin endpoint's.
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/targets/{name}", get(target_page))
        .route("/dead-letters", get(dead_letters_page))
        .route("/dead-letters/{target}/{seq}", get(dead_letter_page))
        .route("/dead-letters/act", post(act))
        .route("/relays", get(relays_page))
        .route("/console.css", get(stylesheet))
        .route("/assets/uplot.js", get(uplot_js))
        .route("/assets/uplot.css", get(uplot_css))
        .route("/assets/console.js", get(console_js))
        .with_state(Arc::new(console))
}

type Shared = State<Arc<Console>>;

/// A page, or the answer to a request that may not see it.
fn page(t: impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("template: {e}\n"),
        )
            .into_response(),
    }
}

fn refused() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Html(view::Login { failed: false }.render().unwrap_or_default()),
    )
        .into_response()
}

fn failed(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Html(
            view::Problem {
                nav: view::Nav::none(),
                message: e.to_string(),
            }
            .render()
            .unwrap_or_default(),
        ),
    )
        .into_response()
}

macro_rules! caller_or_401 {
    ($console:expr, $headers:expr) => {
        match $console.access.caller(&$headers) {
            Some(caller) => caller,
            None => return refused(),
        }
    };
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../templates/console/console.css"),
    )
}

/// A compiled-in asset, cached for a day.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        body,
    )
        .into_response()
}

async fn uplot_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../assets/console/uPlot.iife.min.js"),
    )
}

async fn uplot_css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../../assets/console/uPlot.min.css"),
    )
}

async fn console_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../assets/console/console.js"),
    )
}

async fn login_form() -> Response {
    page(view::Login { failed: false })
}

async fn login(State(console): Shared, body: Bytes) -> Response {
    let form = view::form(&body);
    let token = form.get("token").map(String::as_str).unwrap_or_default();
    if !console.access.token_matches(token.trim()) {
        tracing::warn!(target: "audit", "console login refused");
        return (
            StatusCode::UNAUTHORIZED,
            Html(view::Login { failed: true }.render().unwrap_or_default()),
        )
            .into_response();
    }
    let id = console.access.open();
    tracing::info!(target: "audit", "console login");
    let mut response = Redirect::to("/").into_response();
    if let Ok(cookie) = HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200"
    )) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn logout(State(console): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let caller = caller_or_401!(console, headers);
    if !caller.may_change(view::form(&body).get("csrf").map(String::as_str)) {
        return (StatusCode::FORBIDDEN, "missing or wrong CSRF token\n").into_response();
    }
    console.access.close(&headers);
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("outbox_console=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

async fn overview(State(console): Shared, headers: HeaderMap) -> Response {
    let caller = caller_or_401!(console, headers);
    let storage = console.admin.storage.read().await.clone();
    let targets = console.admin.targets.read().await.clone();
    let status = match storage.status(&targets).await {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    let health = console.admin.health.summary(&targets);
    let rows = status
        .into_iter()
        .map(|s| {
            let state = health.get(&s.target).cloned();
            TargetRow::of(s, state)
        })
        .collect();
    page(Overview {
        nav: view::Nav::of(&caller, &console.access, "overview"),
        targets: rows,
    })
}

async fn target_page(
    State(console): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let caller = caller_or_401!(console, headers);
    let config = console.admin.config.read().await.clone();
    let Some(target) = config.targets.get(&name) else {
        return (
            StatusCode::NOT_FOUND,
            Html(
                view::Problem {
                    nav: view::Nav::of(&caller, &console.access, "overview"),
                    message: format!("no target named {name:?} in the running config"),
                }
                .render()
                .unwrap_or_default(),
            ),
        )
            .into_response();
    };
    let storage = console.admin.storage.read().await.clone();
    let status = match storage.status(std::slice::from_ref(&name)).await {
        Ok(mut s) => s.pop(),
        Err(e) => return failed(e),
    };
    let recent = match storage
        .list_dead_letters(&DeadLetterFilter {
            target: Some(name.clone()),
            limit: 10,
            ..Default::default()
        })
        .await
    {
        Ok(l) => l,
        Err(e) => return failed(e),
    };
    let health = console
        .admin
        .health
        .summary(std::slice::from_ref(&name))
        .remove(&name);
    page(view::TargetPage::of(
        view::Nav::of(&caller, &console.access, "overview"),
        &name,
        target,
        &config,
        status.map(|s| TargetRow::of(s, health)),
        recent,
    ))
}

/// The dead-letter list's query string.
#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    #[serde(default)]
    target: String,
    #[serde(default)]
    event: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    older_ms: Option<i64>,
    older_target: Option<String>,
    older_seq: Option<i64>,
    #[serde(default)]
    done: String,
}

impl ListQuery {
    fn filter(&self) -> Result<DeadLetterFilter, String> {
        let text = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
        Ok(DeadLetterFilter {
            target: text(&self.target),
            event_pattern: text(&self.event),
            error_contains: text(&self.error),
            since_ms: view::time_bound("since", &self.since)?,
            until_ms: view::time_bound("until", &self.until)?,
            older_than: match (self.older_ms, &self.older_target, self.older_seq) {
                (Some(dead_at_ms), Some(target), Some(seq)) => Some(DeadLetterKey {
                    dead_at_ms,
                    target: target.clone(),
                    seq,
                }),
                _ => None,
            },
            limit: PAGE,
        })
    }

    /// The filter's part of a query string (for links and forms).
    fn filter_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("target", &self.target),
            ("event", &self.event),
            ("error", &self.error),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        q.finish()
    }
}

async fn dead_letters_page(
    State(console): Shared,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Response {
    let caller = caller_or_401!(console, headers);
    let nav = view::Nav::of(&caller, &console.access, "dead-letters");
    let filter = match query.filter() {
        Ok(f) => f,
        Err(message) => {
            return (
                StatusCode::BAD_REQUEST,
                Html(view::Problem { nav, message }.render().unwrap_or_default()),
            )
                .into_response();
        }
    };
    let storage = console.admin.storage.read().await.clone();
    let (letters, total) = match tokio::try_join!(
        storage.list_dead_letters(&filter),
        storage.count_dead_letters(&filter)
    ) {
        Ok(found) => found,
        Err(e) => return failed(e),
    };
    let older = (letters.len() == PAGE as usize)
        .then(|| letters.last().map(|l| l.key()))
        .flatten()
        .map(|k| {
            let mut q = form_urlencoded::Serializer::new(query.filter_query());
            q.append_pair("older_ms", &k.dead_at_ms.to_string());
            q.append_pair("older_target", &k.target);
            q.append_pair("older_seq", &k.seq.to_string());
            q.finish()
        });
    let targets = console.admin.targets.read().await.clone();
    page(view::DeadLetters {
        nav,
        targets,
        target: query.target.clone(),
        event: query.event.clone(),
        error: query.error.clone(),
        since: query.since.clone(),
        until: query.until.clone(),
        total,
        paged: filter.older_than.is_some(),
        letters: letters.into_iter().map(DeadLetterRow::of).collect(),
        older,
        done: query.done.clone(),
    })
}

async fn dead_letter_page(
    State(console): Shared,
    headers: HeaderMap,
    Path((target, seq)): Path<(String, i64)>,
) -> Response {
    let caller = caller_or_401!(console, headers);
    let nav = view::Nav::of(&caller, &console.access, "dead-letters");
    let storage = console.admin.storage.read().await.clone();
    match storage.dead_letter(&target, seq).await {
        Ok(Some(detail)) => page(view::DeadLetterPage::of(nav, detail)),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Html(
                view::Problem {
                    nav,
                    message: format!("no dead letter {seq} at target {target:?}"),
                }
                .render()
                .unwrap_or_default(),
            ),
        )
            .into_response(),
        Err(e) => failed(e),
    }
}

/// Replay or purge (`op`): the selected dead letters (`pick` = `seq:target`,
/// repeated) or every one the filter matches (`op` ends in `-matching`). Without
/// `confirm = yes` it answers with a page that says how many, to confirm.
async fn act(State(console): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let caller: Caller = caller_or_401!(console, headers);
    let pairs = view::pairs(&body);
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if !caller.may_change(field("csrf")) {
        return (StatusCode::FORBIDDEN, "missing or wrong CSRF token\n").into_response();
    }
    let nav = view::Nav::of(&caller, &console.access, "dead-letters");
    if console.access.read_only {
        return (
            StatusCode::FORBIDDEN,
            Html(
                view::Problem {
                    nav,
                    message: "the console is read-only ([admin.console] read_only = true)".into(),
                }
                .render()
                .unwrap_or_default(),
            ),
        )
            .into_response();
    }
    // `op`: replay-selected, purge-selected, replay-matching, purge-matching.
    let (action, matching) = match field("op").and_then(|op| op.split_once('-')) {
        Some(("replay", scope)) => (Action::Replay, scope == "matching"),
        Some(("purge", scope)) => (Action::Purge, scope == "matching"),
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "op must be replay-selected, purge-selected, replay-matching or purge-matching\n",
            )
                .into_response();
        }
    };
    let query = ListQuery {
        target: field("target").unwrap_or_default().to_string(),
        event: field("event").unwrap_or_default().to_string(),
        error: field("error").unwrap_or_default().to_string(),
        since: field("since").unwrap_or_default().to_string(),
        until: field("until").unwrap_or_default().to_string(),
        ..Default::default()
    };
    let config = console.admin.config.read().await.clone();
    let storage = console.admin.storage.read().await.clone();
    let picks: Vec<(String, i64)> = pairs
        .iter()
        .filter(|(k, _)| k == "pick")
        .filter_map(|(_, v)| {
            let (seq, target) = v.split_once(':')?;
            Some((target.to_string(), seq.parse().ok()?))
        })
        .collect();
    let selection = if matching {
        let filter = match query.filter() {
            Ok(f) => DeadLetterFilter {
                limit: u32::MAX,
                older_than: None,
                ..f
            },
            Err(message) => {
                return (
                    StatusCode::BAD_REQUEST,
                    Html(view::Problem { nav, message }.render().unwrap_or_default()),
                )
                    .into_response();
            }
        };
        Selection::take(&config, storage.as_ref(), action, &filter).await
    } else {
        Selection::of(&config, action, picks.clone())
    };
    let selection = match selection {
        Ok(s) => s,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Html(
                    view::Problem {
                        nav,
                        message: e.to_string(),
                    }
                    .render()
                    .unwrap_or_default(),
                ),
            )
                .into_response();
        }
    };
    if field("confirm") != Some("yes") {
        return page(view::Confirm {
            nav,
            verb: action.verb().to_string(),
            total: selection.len(),
            counts: selection
                .counts()
                .map(|(t, n)| (t.to_string(), n))
                .collect(),
            fields: pairs
                .iter()
                .filter(|(k, _)| k != "csrf" && k != "confirm")
                .cloned()
                .collect(),
        });
    }
    let who = if caller.csrf.is_some() {
        "session"
    } else {
        "bearer"
    };
    let counts: Vec<String> = selection
        .counts()
        .map(|(t, n)| format!("{t}: {n}"))
        .collect();
    match selection.apply(storage.as_ref(), |_| {}).await {
        Ok(changed) => {
            tracing::info!(
                target: "audit",
                action = action.verb(),
                by = who,
                selected = selection.len(),
                changed,
                targets = %counts.join(", "),
                filter = %if matching { query.filter_query() } else { "(picked)".into() },
                "console {} of dead letters",
                action.verb()
            );
            let mut back = form_urlencoded::Serializer::new(query.filter_query());
            back.append_pair("done", &format!("{} {changed} dead letters", action.done()));
            Redirect::to(&format!("/dead-letters?{}", back.finish())).into_response()
        }
        Err(e) => failed(e),
    }
}

async fn relays_page(State(console): Shared, headers: HeaderMap) -> Response {
    let caller = caller_or_401!(console, headers);
    let storage = console.admin.storage.read().await.clone();
    let targets = console.admin.targets.read().await.clone();
    let status = match storage.status(&targets).await {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    page(view::Relays::of(
        view::Nav::of(&caller, &console.access, "relays"),
        &status,
    ))
}
