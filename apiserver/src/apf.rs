//! API Priority and Fairness, as kube-apiserver has it: every authenticated request is
//! classified by the FlowSchemas (lowest `matchingPrecedence` first) into a priority level
//! and a flow (the user or the namespace, as the schema's distinguisher says); each limited
//! priority level gets a share of the server's seats (`--max-requests-inflight` plus
//! `--max-mutating-requests-inflight`, in proportion to `nominalConcurrencyShares`), and a
//! request waits for seats in one of its level's queues, picked by shuffle sharding among
//! `handSize` queues for its flow (the shortest of them); queues are served in turn, so one
//! flow cannot take the seats of the others. A full queue, or a `Reject` level out of seats,
//! answers 429 with `Retry-After`. The `exempt` level is never limited. A LIST costs more
//! seats when its resource holds many objects (1 per 100, up to 10).
//!
//! Kubernetes' default FlowSchemas and PriorityLevelConfigurations are created at start when
//! missing (`defaults`) and followed from their watch caches (`follow`), so `kubectl apply`
//! of a new one takes effect.
//!
//! **Borrowing** (`lendablePercent`, `borrowingLimitPercent`): every second (`rebalance`)
//! each limited level's seats are set from its demand since the last time (the most seats it
//! had executing and waiting): a level that needed more than its nominal seats borrows, up to
//! its borrowing limit and max-min fairly with the other borrowers, from what the levels that
//! needed less can spare (their nominal seats less their demand, at most their lendable
//! part), and those give up only what is borrowed (`allot`). The sum stays the server's
//! seats. As in Kubernetes, the limits follow demand a period late.
//!
//! Not done: seats held by watches during their initialization (long-running requests are
//! not limited), and Kubernetes' virtual-time fair queuing (queues are served round-robin,
//! which is fair between flows when requests cost alike).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::authn::UserInfo;
use crate::handlers::AppState;
use crate::rbac::{Attributes, Target};
use crate::status::ApiError;

const GROUP: &str = "flowcontrol.apiserver.k8s.io";
/// The most seats one request takes.
const MAX_SEATS: usize = 10;

/// One FlowSchema, compiled.
#[derive(Clone, Debug)]
struct Schema {
    name: String,
    uid: String,
    precedence: i64,
    level: String,
    by: Distinguisher,
    /// The schema's rules, each with its subjects, compiled from the JSON once.
    rules: Vec<Rule>,
}

/// One `PolicyRulesWithSubjects`, typed: classifying a request compares strings, it neither
/// walks JSON nor allocates.
#[derive(Clone, Debug, Default)]
struct Rule {
    subjects: Vec<Subject>,
    resources: Vec<ResourceRule>,
    non_resources: Vec<NonResourceRule>,
}

#[derive(Clone, Debug)]
enum Subject {
    User(String),
    Group(String),
    ServiceAccount { namespace: String, name: String },
}

#[derive(Clone, Debug)]
struct ResourceRule {
    verbs: Vec<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    namespaces: Vec<String>,
    cluster_scope: bool,
}

#[derive(Clone, Debug)]
struct NonResourceRule {
    verbs: Vec<String>,
    urls: Vec<String>,
}

fn owned(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

impl Rule {
    fn compile(r: &Value) -> Rule {
        let subjects = r["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| match s["kind"].as_str() {
                Some("User") => s["user"]["name"].as_str().map(|n| Subject::User(n.to_string())),
                Some("Group") => s["group"]["name"].as_str().map(|n| Subject::Group(n.to_string())),
                Some("ServiceAccount") => Some(Subject::ServiceAccount {
                    namespace: s["serviceAccount"]["namespace"].as_str().unwrap_or("").to_string(),
                    name: s["serviceAccount"]["name"].as_str().unwrap_or("").to_string(),
                }),
                _ => None,
            })
            .collect();
        let resources = r["resourceRules"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|rr| ResourceRule {
                verbs: owned(&rr["verbs"]),
                groups: owned(&rr["apiGroups"]),
                resources: owned(&rr["resources"]),
                namespaces: owned(&rr["namespaces"]),
                cluster_scope: rr["clusterScope"].as_bool() == Some(true),
            })
            .collect();
        let non_resources = r["nonResourceRules"].as_array().into_iter().flatten().map(|nr| NonResourceRule { verbs: owned(&nr["verbs"]), urls: owned(&nr["nonResourceURLs"]) }).collect();
        Rule { subjects, resources, non_resources }
    }

    fn matches(&self, user: &UserInfo, a: &Attributes) -> bool {
        self.subjects.iter().any(|s| s.matches(user)) && self.matches_request(a)
    }

    fn matches_request(&self, a: &Attributes) -> bool {
        match &a.target {
            Target::Resource { group, resource, subresource, namespace, .. } => self.resources.iter().any(|rr| {
                let ns_ok = if namespace.is_empty() { rr.cluster_scope } else { has(&rr.namespaces, namespace) };
                // `resource/subresource` compared in place.
                let res_ok = rr.resources.iter().any(|r| {
                    r == "*"
                        || if subresource.is_empty() {
                            r == resource
                        } else {
                            r.len() == resource.len() + 1 + subresource.len() && r.starts_with(resource.as_str()) && r.as_bytes()[resource.len()] == b'/' && r.ends_with(subresource.as_str())
                        }
                });
                ns_ok && res_ok && has(&rr.verbs, &a.verb) && has(&rr.groups, group)
            }),
            Target::NonResource { path } => self.non_resources.iter().any(|nr| {
                has(&nr.verbs, &a.verb) && nr.urls.iter().any(|u| u == "*" || u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p)))
            }),
        }
    }
}

impl Subject {
    fn matches(&self, user: &UserInfo) -> bool {
        match self {
            Subject::User(n) => n == "*" || *n == user.name,
            Subject::Group(g) => g == "*" || user.groups.iter().any(|x| x == g),
            Subject::ServiceAccount { namespace, name } => {
                let Some((ns, n)) = user.name.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':')) else { return false };
                namespace == ns && (name == "*" || name == n)
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Distinguisher {
    None,
    ByUser,
    ByNamespace,
}

/// A priority level's configuration.
#[derive(Clone, Debug)]
struct LevelConf {
    uid: String,
    exempt: bool,
    shares: usize,
    /// Percent of its nominal seats it may lend; percent it may borrow (None: no limit).
    lendable_percent: usize,
    borrowing_limit_percent: Option<usize>,
    /// None: `Reject` when out of seats.
    queuing: Option<(usize, usize, usize)>,
}

/// A request waiting in a queue: its seats and where to send its permit.
struct Waiter {
    seats: usize,
    tx: tokio::sync::oneshot::Sender<Permit>,
}

/// A level's seats and queues.
#[derive(Default)]
struct LevelState {
    /// Seats it may use now (its nominal ones, moved by borrowing).
    limit: usize,
    /// Its share of the server's seats.
    nominal: usize,
    /// The most seats executing and waiting since the last rebalance.
    peak: usize,
    executing: usize,
    queues: Vec<VecDeque<Waiter>>,
    next: usize,
    dispatched: u64,
    rejected: u64,
}

/// The seats a request holds; given back (and queued requests dispatched) when dropped.
pub struct Permit {
    level: Option<Arc<Mutex<LevelState>>>,
    seats: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(l) = self.level.take() {
            let mut st = l.lock().unwrap();
            st.executing -= self.seats;
            dispatch(&l, &mut st);
        }
    }
}

/// Starts queued requests while their seats fit (a request larger than the limit runs when
/// nothing else does).
fn dispatch(level: &Arc<Mutex<LevelState>>, st: &mut LevelState) {
    loop {
        let n = st.queues.len();
        let Some(i) = (0..n).map(|k| (st.next + k) % n).find(|i| !st.queues[*i].is_empty()) else { return };
        let seats = st.queues[i].front().unwrap().seats;
        if st.executing > 0 && st.executing + seats > st.limit {
            return;
        }
        let w = st.queues[i].pop_front().unwrap();
        st.next = (i + 1) % n;
        st.executing += seats;
        st.dispatched += 1;
        if let Err(mut p) = w.tx.send(Permit { level: Some(level.clone()), seats }) {
            // Its request gave up waiting (deadline, client gone): take the seats back here,
            // without running Drop under the lock.
            p.level = None;
            st.executing -= seats;
            st.dispatched -= 1;
        }
    }
}

/// The configuration and the levels' state.
#[derive(Default)]
pub struct Apf {
    schemas: Mutex<Arc<Vec<Arc<Schema>>>>,
    confs: Mutex<Arc<HashMap<String, Arc<LevelConf>>>>,
    levels: Mutex<HashMap<String, Arc<Mutex<LevelState>>>>,
    /// `--max-requests-inflight` + `--max-mutating-requests-inflight`.
    pub total_seats: std::sync::atomic::AtomicUsize,
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

impl Apf {
    /// Compiles FlowSchema and PriorityLevelConfiguration objects.
    fn set(&self, flowschemas: &[Value], levels: &[Value]) {
        let mut schemas: Vec<Arc<Schema>> = flowschemas
            .iter()
            .map(|f| Arc::new(Schema {
                name: f["metadata"]["name"].as_str().unwrap_or("").to_string(),
                uid: f["metadata"]["uid"].as_str().unwrap_or("").to_string(),
                precedence: f["spec"]["matchingPrecedence"].as_i64().unwrap_or(1000),
                level: f["spec"]["priorityLevelConfiguration"]["name"].as_str().unwrap_or("").to_string(),
                by: match f["spec"]["distinguisherMethod"]["type"].as_str() {
                    Some("ByUser") => Distinguisher::ByUser,
                    Some("ByNamespace") => Distinguisher::ByNamespace,
                    _ => Distinguisher::None,
                },
                rules: f["spec"]["rules"].as_array().into_iter().flatten().map(Rule::compile).collect(),
            }))
            .collect();
        schemas.sort_by(|a, b| a.precedence.cmp(&b.precedence).then_with(|| a.name.cmp(&b.name)));
        let confs: HashMap<String, Arc<LevelConf>> = levels
            .iter()
            .map(|l| {
                let spec = &l["spec"];
                let lim = &spec["limited"];
                let queuing = match lim["limitResponse"]["type"].as_str() {
                    Some("Queue") => {
                        let q = &lim["limitResponse"]["queuing"];
                        Some((q["queues"].as_u64().unwrap_or(64).max(1) as usize, q["handSize"].as_u64().unwrap_or(8).max(1) as usize, q["queueLengthLimit"].as_u64().unwrap_or(50) as usize))
                    }
                    _ => None,
                };
                let conf = LevelConf {
                    uid: l["metadata"]["uid"].as_str().unwrap_or("").to_string(),
                    exempt: spec["type"].as_str() == Some("Exempt"),
                    shares: lim["nominalConcurrencyShares"].as_u64().unwrap_or(30) as usize,
                    lendable_percent: lim["lendablePercent"].as_u64().unwrap_or(0).min(100) as usize,
                    borrowing_limit_percent: lim["borrowingLimitPercent"].as_u64().map(|p| p as usize),
                    queuing,
                };
                (l["metadata"]["name"].as_str().unwrap_or("").to_string(), Arc::new(conf))
            })
            .collect();
        // Each limited level's seats: its share of the server's, at least one.
        let total = self.total_seats.load(std::sync::atomic::Ordering::Relaxed).max(1);
        let sum: usize = confs.values().filter(|c| !c.exempt).map(|c| c.shares).sum::<usize>().max(1);
        let mut states = self.levels.lock().unwrap();
        for (name, c) in &confs {
            let st = states.entry(name.clone()).or_default().clone();
            let mut st = st.lock().unwrap();
            st.nominal = (total * c.shares).div_ceil(sum).max(1);
            st.limit = st.nominal;
            let queues = c.queuing.map_or(0, |q| q.0);
            if st.queues.len() != queues {
                // Waiting requests keep their place in the queues that remain.
                let mut old: Vec<Waiter> = st.queues.drain(..).flatten().collect();
                st.queues = (0..queues).map(|_| VecDeque::new()).collect();
                for (i, w) in old.drain(..).enumerate() {
                    if queues > 0 {
                        st.queues[i % queues].push_back(w);
                    }
                }
            }
        }
        *self.schemas.lock().unwrap() = Arc::new(schemas);
        *self.confs.lock().unwrap() = Arc::new(confs);
    }

    /// Moves seats from the levels that did not need theirs to those that needed more
    /// (borrowing, see the module's notes), and starts what now fits. Called every second.
    pub fn rebalance(&self) {
        let confs = self.confs.lock().unwrap().clone();
        let states: Vec<(Arc<LevelConf>, Arc<Mutex<LevelState>>)> = {
            let levels = self.levels.lock().unwrap();
            let mut v: Vec<_> = confs.iter().filter(|(_, c)| !c.exempt).filter_map(|(n, c)| levels.get(n).map(|l| (n.clone(), c.clone(), l.clone()))).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v.into_iter().map(|(_, c, l)| (c, l)).collect()
        };
        let demands: Vec<Demand> = states
            .iter()
            .map(|(c, l)| {
                let st = l.lock().unwrap();
                let lendable = st.nominal * c.lendable_percent / 100;
                Demand { nominal: st.nominal, lendable, borrowable: c.borrowing_limit_percent.map(|p| st.nominal * p / 100), demand: st.peak }
            })
            .collect();
        for ((_, l), limit) in states.iter().zip(allot(&demands)) {
            let mut st = l.lock().unwrap();
            st.limit = limit;
            // The next period's demand starts from what is in use and waiting now.
            st.peak = st.executing + st.queues.iter().flatten().map(|w| w.seats).sum::<usize>();
            dispatch(l, &mut st);
        }
    }

    /// The schema and level of a request, if any schema matches.
    fn classify(&self, user: &UserInfo, a: &Attributes) -> Option<(Arc<Schema>, Arc<LevelConf>)> {
        let schemas = self.schemas.lock().unwrap().clone();
        let confs = self.confs.lock().unwrap().clone();
        for s in schemas.iter() {
            let hit = s.rules.iter().any(|r| r.matches(user, a));
            if hit {
                return confs.get(&s.level).map(|c| (s.clone(), c.clone()));
            }
        }
        None
    }

    /// `/metrics` lines.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP apiserver_flowcontrol_current_executing_seats Seats in use, per priority level.\n# TYPE apiserver_flowcontrol_current_executing_seats gauge\n",
        );
        let states = self.levels.lock().unwrap();
        let mut names: Vec<&String> = states.keys().collect();
        names.sort();
        let mut inq = String::from("# HELP apiserver_flowcontrol_current_inqueue_requests Requests waiting, per priority level.\n# TYPE apiserver_flowcontrol_current_inqueue_requests gauge\n");
        let mut lim = String::from("# HELP apiserver_flowcontrol_nominal_limit_seats Seats of each priority level.\n# TYPE apiserver_flowcontrol_nominal_limit_seats gauge\n");
        let mut cur = String::from("# HELP apiserver_flowcontrol_current_limit_seats Seats each priority level may use now, after borrowing and lending.\n# TYPE apiserver_flowcontrol_current_limit_seats gauge\n");
        let mut disp = String::from("# HELP apiserver_flowcontrol_dispatched_requests_total Requests that waited in a queue and were started.\n# TYPE apiserver_flowcontrol_dispatched_requests_total counter\n");
        let mut rej = String::from("# HELP apiserver_flowcontrol_rejected_requests_total Requests answered 429.\n# TYPE apiserver_flowcontrol_rejected_requests_total counter\n");
        for n in names {
            let st = states[n].lock().unwrap();
            let queued: usize = st.queues.iter().map(|q| q.len()).sum();
            out.push_str(&format!("apiserver_flowcontrol_current_executing_seats{{priority_level=\"{n}\"}} {}\n", st.executing));
            inq.push_str(&format!("apiserver_flowcontrol_current_inqueue_requests{{priority_level=\"{n}\"}} {queued}\n"));
            lim.push_str(&format!("apiserver_flowcontrol_nominal_limit_seats{{priority_level=\"{n}\"}} {}\n", st.nominal));
            cur.push_str(&format!("apiserver_flowcontrol_current_limit_seats{{priority_level=\"{n}\"}} {}\n", st.limit));
            disp.push_str(&format!("apiserver_flowcontrol_dispatched_requests_total{{priority_level=\"{n}\"}} {}\n", st.dispatched));
            rej.push_str(&format!("apiserver_flowcontrol_rejected_requests_total{{priority_level=\"{n}\",reason=\"queue-full\"}} {}\n", st.rejected));
        }
        out + &inq + &lim + &cur + &disp + &rej
    }
}

/// One level's seats and what it asked for.
#[derive(Clone, Copy, Debug)]
struct Demand {
    nominal: usize,
    /// Seats of its nominal ones it may lend.
    lendable: usize,
    /// Seats it may borrow beyond its nominal ones (None: any).
    borrowable: Option<usize>,
    /// The most seats it had executing and waiting.
    demand: usize,
}

/// Each level's seats. A level that needed less than its nominal seats can spare the rest,
/// down to its nominal less its lendable; a level that needed more borrows from the spares,
/// max-min fairly among the borrowers, each up to its borrowing limit; the lenders give up
/// only what was borrowed, in proportion to what each could spare. So with no borrower every
/// level keeps its nominal seats, and the sum never exceeds theirs.
fn allot(levels: &[Demand]) -> Vec<usize> {
    let spare: Vec<usize> = levels.iter().map(|d| d.nominal - d.demand.clamp(d.nominal - d.lendable, d.nominal)).collect();
    let pool: usize = spare.iter().sum();
    // How much more than its nominal seats each level wants, within its borrowing limit.
    let mut want: Vec<usize> = levels.iter().map(|d| d.demand.saturating_sub(d.nominal).min(d.borrowable.unwrap_or(usize::MAX))).collect();
    let mut given = vec![0usize; levels.len()];
    let mut left = pool;
    // Water-filling: equal increments to every level still wanting.
    loop {
        let hungry: Vec<usize> = (0..levels.len()).filter(|i| want[*i] > 0).collect();
        if hungry.is_empty() || left == 0 {
            break;
        }
        let each = (left / hungry.len()).max(1);
        for i in hungry {
            let give = each.min(want[i]).min(left);
            given[i] += give;
            want[i] -= give;
            left -= give;
            if left == 0 {
                break;
            }
        }
    }
    let borrowed = pool - left;
    let mut taken: Vec<usize> = spare.iter().map(|s| (s * borrowed).checked_div(pool).unwrap_or(0)).collect();
    let mut short = borrowed - taken.iter().sum::<usize>();
    for (t, s) in taken.iter_mut().zip(&spare) {
        let more = (s - *t).min(short);
        *t += more;
        short -= more;
    }
    levels.iter().enumerate().map(|(i, d)| d.nominal - taken[i] + given[i]).collect()
}

/// Which of `queues` queues a flow may use: `hand` of them, dealt from the flow's hash.
fn hand(flow: &str, queues: usize, hand: usize) -> Vec<usize> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    flow.hash(&mut h);
    let mut x = h.finish();
    let mut out = Vec::with_capacity(hand);
    let mut deck: Vec<usize> = (0..queues).collect();
    for i in 0..hand.min(queues) {
        let left = (queues - i) as u64;
        let j = i + (x % left) as usize;
        x /= left;
        if x == 0 {
            x = h.finish().rotate_left(17 + i as u32) | 1;
        }
        deck.swap(i, j);
        out.push(deck[i]);
    }
    out
}

fn too_many() -> ApiError {
    let mut e = ApiError::too_many_requests("Too many requests, please try again later.", "", "");
    e.details = Some(json!({"retryAfterSeconds": 1}));
    e
}

/// The step (`pipeline`): between authentication and authorization, as in Kubernetes.
pub async fn limit<F: std::future::Future<Output = Response>>(st: &AppState, req: Request, next: impl FnOnce(Request) -> F) -> Response {
    let Some(user) = req.extensions().get::<Arc<UserInfo>>().cloned() else { return next(req).await };
    let (path, query) = (req.uri().path().to_string(), req.uri().query().unwrap_or("").to_string());
    if crate::deadline::long_running(&path, Some(&query)) {
        return next(req).await;
    }
    let a = crate::rbac::attributes(req.method().as_str(), &path, &query);
    let Some((schema, conf)) = st.apf.classify(&user, &a) else { return next(req).await };
    let headers = [("X-Kubernetes-PF-FlowSchema-UID", schema.uid.clone()), ("X-Kubernetes-PF-PriorityLevel-UID", conf.uid.clone())];
    let with_headers = |mut r: Response| {
        for (k, v) in &headers {
            if let Ok(v) = axum::http::HeaderValue::from_str(v) {
                r.headers_mut().insert(*k, v);
            }
        }
        r
    };
    if conf.exempt {
        return with_headers(next(req).await);
    }
    let seats = if a.verb == "list" { list_seats(&st, &a).await } else { 1 };
    let Some(level) = st.apf.levels.lock().unwrap().get(&schema.level).cloned() else { return next(req).await };
    let flow = match (schema.by, &a.target) {
        (Distinguisher::ByUser, _) => format!("{}/{}", schema.name, user.name),
        (Distinguisher::ByNamespace, Target::Resource { namespace, .. }) => format!("{}/{namespace}", schema.name),
        _ => schema.name.clone(),
    };
    let permit = {
        let mut s = level.lock().unwrap();
        let nothing_waits = s.queues.iter().all(|q| q.is_empty());
        let waiting: usize = s.queues.iter().flatten().map(|w| w.seats).sum();
        s.peak = s.peak.max(s.executing + waiting + seats);
        if nothing_waits && (s.executing == 0 || s.executing + seats <= s.limit) {
            s.executing += seats;
            Ok(Permit { level: Some(level.clone()), seats })
        } else if let Some((queues, hand_size, qll)) = conf.queuing.filter(|_| !s.queues.is_empty()) {
            let q = hand(&flow, queues.min(s.queues.len()), hand_size).into_iter().min_by_key(|i| s.queues[*i].len()).unwrap_or(0);
            if s.queues[q].len() >= qll {
                s.rejected += 1;
                Err(None)
            } else {
                let (tx, rx) = tokio::sync::oneshot::channel();
                s.queues[q].push_back(Waiter { seats, tx });
                Err(Some(rx))
            }
        } else {
            s.rejected += 1;
            Err(None)
        }
    };
    let _permit = match permit {
        Ok(p) => p,
        Err(None) => return with_headers(too_many().into_response()),
        // Waiting counts against the request's deadline (the deadline middleware is outside).
        Err(Some(rx)) => match rx.await {
            Ok(p) => p,
            Err(_) => return with_headers(too_many().into_response()),
        },
    };
    with_headers(next(req).await)
}

/// The seats of a LIST: one per 100 objects of its resource in the cache, 1 to 10.
async fn list_seats(st: &AppState, a: &Attributes) -> usize {
    let Target::Resource { group, resource, .. } = &a.target else { return 1 };
    let Some(info) = st.reg.resources.iter().find(|r| r.group == group && r.resource == resource).cloned() else { return 1 };
    match st.caches.get(&st.store, &info).await {
        Ok(c) => (c.snapshot().1.len().div_ceil(100)).clamp(1, MAX_SEATS),
        Err(_) => 1,
    }
}

/// Rebalances the levels' seats every second (borrowing).
pub(crate) async fn rebalance_loop(st: Arc<AppState>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        st.apf.rebalance();
    }
}

/// Keeps `st.apf` compiled from the FlowSchemas and PriorityLevelConfigurations.
pub(crate) async fn follow(st: Arc<AppState>) {
    let target = st.clone();
    crate::cached::follow(st, &[(GROUP, "flowschemas"), (GROUP, "prioritylevelconfigurations")], move |o| target.apf.set(&o[0], &o[1])).await
}

/// Kubernetes' default priority levels and flow schemas (mandatory and suggested), created at
/// start when missing.
pub fn defaults() -> Vec<(&'static str, Value)> {
    let boot = json!({"apf.kubernetes.io/autoupdate-spec": "true"});
    let level = |name: &str, spec: Value| ("prioritylevelconfigurations", json!({"apiVersion": format!("{GROUP}/v1"), "kind": "PriorityLevelConfiguration", "metadata": {"name": name, "annotations": boot}, "spec": spec}));
    let queued = |shares: u64, lend: u64, queues: u64, hand: u64| {
        json!({"type": "Limited", "limited": {"nominalConcurrencyShares": shares, "lendablePercent": lend, "limitResponse": {"type": "Queue", "queuing": {"queues": queues, "handSize": hand, "queueLengthLimit": 50}}}})
    };
    let all_resources = json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": true, "namespaces": ["*"]}]);
    let all_urls = json!([{"verbs": ["*"], "nonResourceURLs": ["*"]}]);
    let group = |g: &str| json!({"kind": "Group", "group": {"name": g}});
    let user = |u: &str| json!({"kind": "User", "user": {"name": u}});
    let schema = |name: &str, precedence: u64, level: &str, by: Option<&str>, rules: Value| {
        let mut spec = json!({"matchingPrecedence": precedence, "priorityLevelConfiguration": {"name": level}, "rules": rules});
        if let Some(b) = by {
            spec["distinguisherMethod"] = json!({"type": b});
        }
        ("flowschemas", json!({"apiVersion": format!("{GROUP}/v1"), "kind": "FlowSchema", "metadata": {"name": name, "annotations": boot}, "spec": spec}))
    };
    let everyone = json!([group("system:authenticated"), group("system:unauthenticated")]);
    vec![
        level("exempt", json!({"type": "Exempt", "exempt": {"nominalConcurrencyShares": 0, "lendablePercent": 0}})),
        level("catch-all", json!({"type": "Limited", "limited": {"nominalConcurrencyShares": 5, "lendablePercent": 0, "limitResponse": {"type": "Reject"}}})),
        level("system", queued(30, 33, 64, 6)),
        level("node-high", queued(40, 25, 64, 6)),
        level("leader-election", queued(10, 0, 16, 4)),
        level("workload-high", queued(40, 50, 128, 6)),
        level("workload-low", queued(100, 90, 128, 6)),
        level("global-default", queued(20, 50, 128, 6)),
        schema("exempt", 1, "exempt", None, json!([{"subjects": [group("system:masters")], "resourceRules": all_resources, "nonResourceRules": all_urls}])),
        schema("probes", 2, "exempt", None, json!([{"subjects": everyone, "nonResourceRules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz", "/readyz", "/livez"]}]}])),
        schema("system-leader-election", 100, "leader-election", Some("ByUser"), json!([{"subjects": [user("system:kube-controller-manager"), user("system:kube-scheduler")],
            "resourceRules": [{"verbs": ["get", "create", "update"], "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "namespaces": ["*"]}]}])),
        schema("system-node-high", 400, "node-high", Some("ByUser"), json!([{"subjects": [group("system:nodes")],
            "resourceRules": [{"verbs": ["*"], "apiGroups": [""], "resources": ["nodes", "nodes/status"], "clusterScope": true},
                              {"verbs": ["*"], "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "namespaces": ["*"]}]}])),
        schema("system-nodes", 500, "system", Some("ByUser"), json!([{"subjects": [group("system:nodes")], "resourceRules": all_resources, "nonResourceRules": all_urls}])),
        schema("kube-controller-manager", 800, "workload-high", Some("ByNamespace"), json!([{"subjects": [user("system:kube-controller-manager")], "resourceRules": all_resources, "nonResourceRules": all_urls}])),
        schema("kube-scheduler", 800, "workload-high", Some("ByNamespace"), json!([{"subjects": [user("system:kube-scheduler")], "resourceRules": all_resources, "nonResourceRules": all_urls}])),
        schema("kube-system-service-accounts", 900, "workload-high", Some("ByNamespace"), json!([{"subjects": [{"kind": "ServiceAccount", "serviceAccount": {"namespace": "kube-system", "name": "*"}}], "resourceRules": all_resources, "nonResourceRules": all_urls}])),
        schema("service-accounts", 9000, "workload-low", Some("ByUser"), json!([{"subjects": [group("system:serviceaccounts")], "resourceRules": all_resources, "nonResourceRules": all_urls}])),
        schema("global-default", 9900, "global-default", Some("ByUser"), json!([{"subjects": everyone, "resourceRules": all_resources, "nonResourceRules": all_urls}])),
        schema("catch-all", 10000, "catch-all", Some("ByUser"), json!([{"subjects": everyone, "resourceRules": all_resources, "nonResourceRules": all_urls}])),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apf(total: usize) -> Apf {
        let a = Apf::default();
        a.total_seats.store(total, std::sync::atomic::Ordering::Relaxed);
        let mut fs = Vec::new();
        let mut pl = Vec::new();
        for (kind, mut v) in defaults() {
            v["metadata"]["uid"] = json!(format!("uid-{}", v["metadata"]["name"].as_str().unwrap()));
            if kind == "flowschemas" { fs.push(v) } else { pl.push(v) }
        }
        a.set(&fs, &pl);
        a
    }

    fn attrs(method: &str, path: &str) -> Attributes {
        crate::rbac::attributes(method, path, "")
    }

    #[test]
    fn requests_are_classified_as_kubernetes_classifies_them() {
        let a = apf(600);
        let class = |u: UserInfo, m: &str, p: &str| a.classify(&u, &attrs(m, p)).map(|(s, _)| s.name.clone()).unwrap_or_default();
        assert_eq!(class(UserInfo::new("admin", vec!["system:masters".into()]), "GET", "/api/v1/pods"), "exempt");
        assert_eq!(class(UserInfo::new("system:node:n1", vec!["system:nodes".into()]), "PUT", "/api/v1/nodes/n1/status"), "system-node-high");
        assert_eq!(class(UserInfo::new("system:node:n1", vec!["system:nodes".into()]), "GET", "/api/v1/pods"), "system-nodes");
        assert_eq!(class(UserInfo::new("system:serviceaccount:dev:ci", vec!["system:serviceaccounts".into(), "system:authenticated".into()]), "GET", "/api/v1/pods"), "service-accounts");
        assert_eq!(class(UserInfo::new("system:serviceaccount:kube-system:x", vec!["system:serviceaccounts".into()]), "GET", "/api/v1/pods"), "kube-system-service-accounts");
        assert_eq!(class(UserInfo::new("alice", vec!["system:authenticated".into()]), "GET", "/api/v1/namespaces/d/pods"), "global-default");
        assert_eq!(class(UserInfo::new("alice", vec!["system:authenticated".into()]), "GET", "/readyz"), "probes");
    }

    #[test]
    fn levels_share_the_seats_by_their_shares() {
        let a = apf(600);
        let limit = |n: &str| a.levels.lock().unwrap()[n].lock().unwrap().limit;
        // 245 shares in all: workload-low 100 of them.
        assert_eq!(limit("workload-low"), (600usize * 100).div_ceil(245));
        assert_eq!(limit("catch-all"), (600usize * 5).div_ceil(245));
        assert!(limit("leader-election") >= 1);
    }

    #[test]
    fn seats_are_lent_by_levels_that_need_fewer_to_those_that_need_more() {
        let d = |nominal, lendable, borrowable, demand| Demand { nominal, lendable, borrowable, demand };
        // A busy level borrows what an idle one may lend (half of its 10).
        assert_eq!(allot(&[d(10, 0, None, 20), d(10, 5, None, 0)]), [15, 5]);
        // Nobody borrows: every level keeps its nominal seats, busy or not.
        assert_eq!(allot(&[d(10, 5, None, 3), d(10, 5, None, 0)]), [10, 10]);
        // Nothing lendable, nothing borrowed.
        assert_eq!(allot(&[d(10, 0, None, 20), d(10, 0, None, 0)]), [10, 10]);
        // A borrowing limit of 2 seats; the lender gives up only those.
        assert_eq!(allot(&[d(10, 0, Some(2), 20), d(10, 5, None, 0)]), [12, 8]);
        // A lender that needs 7 of its 10 spares 3.
        assert_eq!(allot(&[d(10, 0, None, 20), d(10, 5, None, 7)]), [13, 7]);
        // Two borrowers share max-min fairly: one wants 2 more, the other takes the rest.
        assert_eq!(allot(&[d(10, 0, None, 20), d(10, 8, None, 0), d(10, 0, None, 12)]), [16, 2, 12]);
        // Lenders give in proportion to what they can spare.
        assert_eq!(allot(&[d(10, 0, None, 14), d(10, 6, None, 0), d(10, 2, None, 0)]), [14, 7, 9]);
        // Whatever the demands: within each level's bounds, and the sum unchanged or less.
        let mut seed = 0x9e37_79b9u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n) as usize
        };
        for _ in 0..2000 {
            let levels: Vec<Demand> = (0..1 + rnd(6))
                .map(|_| {
                    let nominal = 1 + rnd(50);
                    d(nominal, nominal * rnd(101) / 100, if rnd(2) == 0 { None } else { Some(nominal * rnd(201) / 100) }, rnd(120))
                })
                .collect();
            let got = allot(&levels);
            assert!(got.iter().sum::<usize>() <= levels.iter().map(|l| l.nominal).sum::<usize>(), "{levels:?} -> {got:?}");
            for (l, g) in levels.iter().zip(&got) {
                assert!(*g >= l.nominal - l.lendable && *g <= l.nominal.saturating_add(l.borrowable.unwrap_or(usize::MAX)), "{l:?} -> {g}");
                assert!(*g >= l.nominal || *g >= l.demand, "a lender gave up seats it needed: {l:?} -> {g}");
            }
        }
    }

    #[tokio::test]
    async fn a_saturated_level_borrows_and_starts_its_queued_requests() {
        let a = apf(600);
        let level = |n: &str| a.levels.lock().unwrap()[n].clone();
        let (busy, idle) = (level("global-default"), level("workload-low"));
        let nominal = busy.lock().unwrap().nominal;
        // global-default: every seat taken and one request waiting.
        let held = {
            let mut s = busy.lock().unwrap();
            s.executing = nominal;
            s.peak = nominal + 1;
            Permit { level: Some(busy.clone()), seats: nominal }
        };
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        busy.lock().unwrap().queues[0].push_back(Waiter { seats: 1, tx });
        a.rebalance();
        let limit = busy.lock().unwrap().limit;
        assert_eq!(limit, nominal + 1, "it borrowed the one seat it lacked");
        let seats = |f: fn(&LevelState) -> usize| a.levels.lock().unwrap().values().map(|l| f(&l.lock().unwrap())).sum::<usize>();
        assert_eq!(seats(|s| s.limit), seats(|s| s.nominal), "one idle level lent it: the server's seats are unchanged");
        let idle_nominal = idle.lock().unwrap().nominal;
        let p = rx.try_recv().expect("the waiting request started on the borrowed seat");
        drop(p);
        drop(held);
        // Idle again: the next rebalance gives every level its nominal seats back.
        a.rebalance();
        a.rebalance();
        assert_eq!(busy.lock().unwrap().limit, nominal);
        assert_eq!(idle.lock().unwrap().limit, idle_nominal);
    }

    #[test]
    fn a_flow_is_dealt_distinct_queues_and_always_the_same_ones() {
        let h = hand("global-default/alice", 128, 6);
        assert_eq!(h.len(), 6);
        let mut d = h.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 6, "{h:?}");
        assert!(h.iter().all(|q| *q < 128));
        assert_eq!(h, hand("global-default/alice", 128, 6));
        assert_ne!(h, hand("global-default/bob", 128, 6));
    }

    #[tokio::test]
    async fn a_full_level_queues_then_rejects_and_a_release_starts_the_next_in_turn() {
        let level = Arc::new(Mutex::new(LevelState { limit: 1, queues: (0..2).map(|_| VecDeque::new()).collect(), ..Default::default() }));
        let first = {
            let mut s = level.lock().unwrap();
            s.executing += 1;
            Permit { level: Some(level.clone()), seats: 1 }
        };
        let (tx_a, rx_a) = tokio::sync::oneshot::channel();
        let (tx_b, rx_b) = tokio::sync::oneshot::channel();
        let (tx_c, mut rx_c) = tokio::sync::oneshot::channel();
        {
            let mut s = level.lock().unwrap();
            s.queues[0].push_back(Waiter { seats: 1, tx: tx_a });
            s.queues[0].push_back(Waiter { seats: 1, tx: tx_c });
            s.queues[1].push_back(Waiter { seats: 1, tx: tx_b });
        }
        drop(first);
        let a = rx_a.await.expect("the head of the first queue starts");
        assert_eq!(level.lock().unwrap().executing, 1);
        drop(a);
        // The other queue's turn, not the second request of the first queue.
        let b = rx_b.await.expect("the second queue is served next");
        assert!(rx_c.try_recv().is_err());
        // A waiter that gave up is skipped and its seats are not lost.
        drop(rx_c);
        drop(b);
        let s = level.lock().unwrap();
        assert_eq!((s.executing, s.queues.iter().map(|q| q.len()).sum::<usize>()), (0, 0));
    }
}
