//! The API of human control (issue 7): approval requests and decisions,
//! plans, and the policy itself (`brig policy test` against the running
//! deployment). Every decision a human makes here is itself decided by
//! policy (`approval.grant`) under the caller's principal.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use brig_core::event::{now_rfc3339, Outcome};
use brig_core::Error;
use serde::Deserialize;

use crate::api::{parse_id, ApiError, ApiJson, ApiResult, AppState, Routes};
use crate::identity::Caller;
use crate::manager::session_event;

pub(crate) fn routes(r: Routes) -> Routes {
    r.get("/v1/approvals", list)
        .get("/v1/approvals/{id}", show)
        .post("/v1/approvals/{id}/approve", approve)
        .post("/v1/approvals/{id}/deny", deny)
        .post("/v1/sessions/{id}/plans", submit_plan)
        .get("/v1/sessions/{id}/plans", plans)
        .post("/v1/policy/test", policy_test)
        .get("/v1/policy", policy_show)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
}

async fn list(
    State(st): State<AppState>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| {
        ApiError(
            Error::invalid(format!("bad query: {}", e.body_text()))
                .hint("use state=pending|approved|denied|expired|cancelled"),
        )
    })?;
    let all = st.mgr.approvals()?.list(q.state).await?;
    Ok(axum::Json(all).into_response())
}

async fn show(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(axum::Json(st.mgr.approvals()?.get(&id).await?).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    /// How long the approval holds (`30m`; default `[approvals] default_for`).
    #[serde(default, rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyBody {
    reason: String,
}

/// Policy decides whether the caller may decide this request at all.
async fn may_decide(
    st: &AppState,
    caller: &Caller,
    id: &str,
) -> ApiResult<(brig_store::approvals::ApprovalRecord, Vec<String>)> {
    let rec = st.mgr.approvals()?.get(id).await?;
    let human = caller.human();
    let r = brig_policy::Request::approval_grant(&human, &rec.human, &rec.id, &rec.roles);
    st.mgr.decide_human(&r).await?;
    // The roles the approval counts as: those asked for that the caller holds.
    let roles: Vec<String> = rec
        .roles
        .iter()
        .filter(|r| human.roles.contains(r))
        .cloned()
        .collect();
    Ok((rec, roles))
}

async fn approve(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    // The body is optional: `{}` or nothing approves for the default time.
    let b: ApproveBody = if body.iter().all(u8::is_ascii_whitespace) {
        ApproveBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError(
                Error::invalid(format!("bad approve body: {e}"))
                    .hint("send {\"for\": \"30m\", \"note\": \"...\"} or nothing"),
            )
        })?
    };
    let for_ = b
        .for_
        .as_deref()
        .map(brig_core::units::parse_duration)
        .transpose()
        .map_err(|e| ApiError(e.context("for")))?;
    decide(&st, &caller, &id, true, for_, b.note).await
}

async fn deny(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<DenyBody>,
) -> ApiResult<Response> {
    if b.reason.trim().is_empty() {
        return Err(ApiError(
            Error::invalid("a denial needs a reason")
                .hint("the agent is told it: say what would be acceptable"),
        ));
    }
    decide(&st, &caller, &id, false, None, Some(b.reason)).await
}

/// Policy first (`approval.grant`), then the store's single decision.
async fn decide(
    st: &AppState,
    caller: &Caller,
    id: &str,
    approve: bool,
    for_: Option<std::time::Duration>,
    note: Option<String>,
) -> ApiResult<Response> {
    let (rec, roles) = may_decide(st, caller, id).await?;
    let live = rec
        .session
        .parse()
        .map(|s| st.mgr.is_live(&s))
        .unwrap_or(false);
    let h = crate::approvals::HumanDecision {
        by: caller.id.clone(),
        approve,
        for_,
        note,
        roles,
    };
    let done = st.mgr.approvals()?.decide(id, h, live).await?;
    Ok(axum::Json(done).into_response())
}

/// A structured plan: goal, steps, estimated blast radius, rollback.
#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Plan {
    goal: String,
    steps: Vec<String>,
    blast_radius: BlastRadius,
    rollback: String,
}

#[derive(Deserialize, serde::Serialize, Default)]
#[serde(deny_unknown_fields)]
struct BlastRadius {
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    services: Vec<String>,
    #[serde(default)]
    data: Vec<String>,
}

const MAX_PLAN_STEPS: usize = 200;

async fn submit_plan(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<Plan>,
) -> ApiResult<Response> {
    let sid = parse_id(&id)?;
    let info = st.mgr.get(&sid).await?;
    if !st.mgr.is_live(&sid) {
        return Err(ApiError(Error::conflict(format!(
            "session {sid} is not live"
        ))));
    }
    let bad =
        |m: &str| {
            ApiError(Error::invalid(format!("plan: {m}")).hint(
                "a plan is {goal, steps: [..], blast_radius: {files, services, data}, rollback}",
            ))
        };
    if p.goal.trim().is_empty() {
        return Err(bad("goal is empty"));
    }
    if p.steps.is_empty() || p.steps.len() > MAX_PLAN_STEPS {
        return Err(bad(&format!("steps must be 1 to {MAX_PLAN_STEPS}")));
    }
    if p.rollback.trim().is_empty() {
        return Err(bad("rollback is empty: say how to undo it"));
    }
    use rand::Rng;
    let pid = format!(
        "plan-{:012x}",
        rand::thread_rng().gen::<u64>() & 0xffff_ffff_ffff
    );
    let at = now_rfc3339();
    let mut rec = serde_json::to_value(&p).unwrap_or_default();
    rec["id"] = pid.clone().into();
    rec["session"] = sid.to_string().into();
    rec["submitted_at"] = at.clone().into();
    let ev = session_event(&info, "plan.submit", Outcome::Info).details(rec.clone());
    let r2 = rec.clone();
    st.mgr
        .db()
        .write(move |s| s.add_plan(&pid, &sid, &at, &r2, &ev))
        .await?;
    Ok((axum::http::StatusCode::CREATED, axum::Json(rec)).into_response())
}

async fn plans(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let sid = parse_id(&id)?;
    st.mgr.get(&sid).await?;
    let all = st.mgr.db().run(move |s| s.plans(&sid)).await?;
    Ok(axum::Json(all).into_response())
}

/// `brig policy test` against the running deployment: the decision and the
/// policies that made it (not journaled: nothing was done).
async fn policy_test(
    State(st): State<AppState>,
    ApiJson(r): ApiJson<brig_policy::Request>,
) -> ApiResult<Response> {
    let p = st.mgr.policy()?;
    let d = p.engine.authorize(&r);
    let text = brig_policy::explain(&d);
    Ok(axum::Json(serde_json::json!({"decision": d, "explanation": text})).into_response())
}

async fn policy_show(State(st): State<AppState>) -> ApiResult<Response> {
    let p = st.mgr.policy()?;
    let profiles: Vec<serde_json::Value> = p
        .engine
        .profiles()
        .iter()
        .map(|name| {
            serde_json::json!({
                "profile": name,
                "policies": p.engine.policies(&format!("profile:{name}")).or_else(|| p.engine.policies(name)),
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({
        "digest": p.engine.digest(),
        "profiles": profiles,
        "deployment": p.engine.policies(brig_policy::DEPLOYMENT_SET),
    }))
    .into_response())
}
