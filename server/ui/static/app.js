// The web UI of local-agent-server: plain JavaScript, no dependencies. It talks only to the GraphQL API
// (../graphql), so every tenant scope, role check and limit of the API applies. Every value from the API is
// put into the page as text (textContent / createElement), never as markup: run names, labels and log lines
// are written by whoever runs flows.
"use strict";

(() => {
  // GRAPHQL-QUERIES-BEGIN: every document the UI sends (tests/integration/test_server_ui_api.py runs each one
  // against the real server; keep them plain strings without ${} substitutions).
  const QUERIES = Object.freeze({
    api: `query UiApi { api { auth_mode version } }`,
    authInfo: `query UiAuthInfo { auth_info { tenant_id api_token_scope } }`,
    runs: `query UiRuns($where: flow_run_bool_exp, $order_by: [flow_run_order_by!], $limit: Int) {
  flow_run(where: $where, order_by: $order_by, limit: $limit) {
    id name state state_message scheduled_start_time start_time end_time labels auto_scheduled
    flow { id name version } agent { id name }
  }
}`,
    flowChoices: `query UiFlowChoices { flow(where: {archived: {_eq: false}}, order_by: [{name: asc}, {version: desc}], limit: 500) { id name version } }`,
    flows: `query UiFlows {
  flow(where: {archived: {_eq: false}}, order_by: [{name: asc}, {version: desc}], limit: 500) {
    id name version is_schedule_active project { id name }
    flow_runs(order_by: [{scheduled_start_time: desc}, {id: desc}], limit: 5) { id name state scheduled_start_time }
  }
}`,
    run: `query UiRun($id: uuid!) {
  flow_run_by_pk(id: $id) {
    id name state state_message version parameters labels scheduled_start_time start_time end_time
    auto_scheduled flow { id name version project { name } } agent { id name }
    states(order_by: [{timestamp: asc}, {version: asc}], limit: 500) { id timestamp state message version }
    task_runs(order_by: [{map_index: asc}], limit: 1000) {
      id name map_index state state_start_time state_timestamp task { id name slug }
    }
  }
}`,
    logs: `query UiLogs($where: log_bool_exp, $limit: Int) {
  log(where: $where, order_by: [{timestamp: asc}, {id: asc}], limit: $limit) { id timestamp level name message task_run_id }
}`,
    agents: `query UiAgents { agent(order_by: [{last_queried: desc_nulls_last}], limit: 500) { id name type core_version labels last_queried created } }`,
    cancelRun: `mutation UiCancelRun($input: cancel_flow_run_input!) { cancel_flow_run(input: $input) { state } }`,
    createRun: `mutation UiCreateRun($input: create_flow_run_input!) { create_flow_run(input: $input) { id } }`,
  });
  // GRAPHQL-QUERIES-END

  const TOKEN_KEY = "local-agent-token";
  const POLL_MS = 2000;
  const PAGE_SIZE = 50;
  const LOG_BATCH = 1000;
  const LOG_LOOKBACK_MS = 30000; // the flow's logger sends in batches: lines may arrive a little late
  const FINISHED = new Set(["Success", "Failed", "Cancelled", "Skipped", "TimedOut", "TriggerFailed", "Cached",
    "Mapped", "Looped"]);
  const FAILED = new Set(["Failed", "TimedOut", "TriggerFailed"]);
  const STATES = ["Scheduled", "Submitted", "Queued", "Running", "Retrying", "Paused", "Pending", "Success",
    "Failed", "Cancelling", "Cancelled", "TimedOut", "Skipped"];

  const session = { authMode: null, scope: null, tenant: null };
  let generation = 0; // bumped on every route change: polls of the page left behind stop

  // ------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(message, code) { super(message); this.code = code || "ERROR"; }
  }

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY); } catch (_e) { return null; }
  }

  async function gql(name, variables) {
    const headers = { "Content-Type": "application/json" };
    const held = token();
    if (held && session.authMode === "token") headers.Authorization = "Bearer " + held;
    let response;
    try {
      response = await fetch(new URL("../graphql", location.href), {
        method: "POST", headers, credentials: "omit", cache: "no-store",
        body: JSON.stringify({ query: QUERIES[name], variables: variables || {} }),
      });
    } catch (err) {
      throw new ApiError("The server is not reachable (" + err.message + ").", "NETWORK");
    }
    let body;
    try { body = await response.json(); } catch (_e) {
      throw new ApiError("The server answered HTTP " + response.status + " without a GraphQL body.", "HTTP");
    }
    if (body && Array.isArray(body.errors) && body.errors.length) {
      const first = body.errors[0] || {};
      const code = (first.extensions && first.extensions.code) || "ERROR";
      if (code === "UNAUTHENTICATED" && session.authMode === "token" && name !== "authInfo") {
        logout(String(first.message));
      }
      throw new ApiError(String(first.message || "Unknown error"), code);
    }
    return (body && body.data) || {};
  }

  // ------------------------------------------------------------------ DOM helpers (text only)

  // An attribute that loads or navigates takes in-page (#...) values only: a value from the API can never
  // become a script link or an off-site request, whatever a future call passes.
  const URL_ATTRIBUTES = new Set(["href", "src", "srcdoc", "action", "formaction", "xlink:href"]);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key === "testid") node.setAttribute("data-testid", value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (URL_ATTRIBUTES.has(key) && !String(value).startsWith("#")) {
        throw new Error("only in-page links are built here, not " + key + "=" + String(value).slice(0, 40));
      }
      else if (key === "disabled" || key === "hidden") node[key] = Boolean(value);
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function main() { return document.getElementById("main"); }

  function status(text, isError) {
    const node = document.getElementById("status");
    node.textContent = text;
    node.className = isError ? "error-text" : "";
  }

  function cssName(value) {
    return String(value || "unknown").toLowerCase().replace(/[^a-z0-9]+/g, "-");
  }

  function badge(state, props, small) {
    const name = state || "Unknown";
    return el("span", { ...(props || {}), class: "badge " + (small ? "small " : "") + "state-" + cssName(name) },
      name);
  }

  function runLink(run, props) {
    return el("a", { ...(props || {}), href: "#/runs/" + encodeURIComponent(run.id) }, run.name || run.id);
  }

  function labels(list) {
    return el("span", { class: "labels" },
      (Array.isArray(list) ? list : []).map((label) => el("span", { class: "label" }, String(label))));
  }

  function errorBox(testid, message) {
    return el("div", { class: "error", testid, role: "alert" }, message);
  }

  // ------------------------------------------------------------------ time

  function pad(n) { return String(n).padStart(2, "0"); }

  function formatTime(value) {
    if (!value) return "";
    const d = new Date(value);
    if (Number.isNaN(d.getTime())) return String(value);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds());
  }

  function formatSeconds(seconds) {
    if (seconds < 0) return "";
    if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + " s";
    const s = Math.floor(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return h ? h + " h " + m + " min" : m + " min " + (s % 60) + " s";
  }

  function duration(run) {
    if (!run.start_time) return "";
    const end = run.end_time ? new Date(run.end_time) : (FINISHED.has(run.state) ? null : new Date());
    return end ? formatSeconds((end - new Date(run.start_time)) / 1000) : "";
  }

  function ago(value) {
    if (!value) return "never";
    const seconds = (Date.now() - new Date(value).getTime()) / 1000;
    if (seconds < 5) return "just now";
    if (seconds < 3600) return formatSeconds(seconds).replace(/ \d+ s$/, "") + " ago";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h ago";
    return Math.floor(seconds / 86400) + " d ago";
  }

  function timeCell(value, cls) {
    return el("td", { class: cls, title: value || null }, formatTime(value));
  }

  // ------------------------------------------------------------------ polling

  function poll(load) {
    const mine = generation;
    let last = null;
    const tick = async () => {
      if (mine !== generation) return;
      if (!document.hidden) {
        try {
          const more = await load(last);
          last = more === undefined ? last : more;
          status("Updated " + formatTime(new Date().toISOString()) + " UTC");
        } catch (err) {
          if (mine !== generation) return;
          status(err.message, true);
        }
      }
      if (mine === generation) setTimeout(tick, POLL_MS);
    };
    tick();
  }

  function canAct() {
    return session.authMode === "none" || session.scope === null || session.scope === "USER" ||
      session.scope === "ADMIN";
  }

  // ------------------------------------------------------------------ runs page

  const runsView = { filters: { state: "", flow: "", label: "" }, cursor: null };

  function runsWhere() {
    const where = {};
    const f = runsView.filters;
    if (f.state) where.state = { _eq: f.state };
    if (f.flow) where.flow_id = { _eq: f.flow };
    if (f.label) where.labels = { _contains: [f.label] };
    const c = runsView.cursor;
    if (c) {
      where._and = [{ scheduled_start_time: { _lte: c.t } },
        { _or: [{ scheduled_start_time: { _lt: c.t } }, { id: { [c.inclusive ? "_lte" : "_lt"]: c.id } }] }];
    }
    return where;
  }

  async function newerCursor(first) {
    const where = runsWhere();
    delete where._and;
    where._and = [{ scheduled_start_time: { _gte: first.scheduled_start_time } },
      { _or: [{ scheduled_start_time: { _gt: first.scheduled_start_time } }, { id: { _gt: first.id } }] }];
    const data = await gql("runs", { where, order_by: [{ scheduled_start_time: "asc" }, { id: "asc" }],
      limit: PAGE_SIZE });
    const rows = data.flow_run || [];
    if (rows.length < PAGE_SIZE) return null;
    const top = rows[rows.length - 1];
    return { t: top.scheduled_start_time, id: top.id, inclusive: true };
  }

  function runRow(run) {
    return el("tr", { testid: "run-row", "data-run-id": run.id },
      el("td", { class: "col-state" }, badge(run.state, { testid: "run-state", title: run.state_message || null })),
      el("td", { class: "col-name" }, runLink(run, { testid: "run-link" }),
        run.auto_scheduled ? el("span", { class: "muted" }, " (schedule)") : null),
      el("td", { class: "col-flow" }, run.flow ? run.flow.name + " (v" + run.flow.version + ")" : ""),
      el("td", { class: "col-labels" }, labels(run.labels)),
      timeCell(run.scheduled_start_time, "col-scheduled"),
      timeCell(run.start_time, "col-start"),
      timeCell(run.end_time, "col-end"),
      el("td", { class: "col-duration" }, duration(run)),
      el("td", { class: "col-agent" }, run.agent ? run.agent.name || run.agent.id : ""));
  }

  function filterBar(onChange) {
    const f = runsView.filters;
    const state = el("select", { testid: "filter-state", "aria-label": "State" },
      el("option", { value: "" }, "every state"), STATES.map((s) => el("option", { value: s }, s)));
    state.value = f.state;
    const flow = el("select", { testid: "filter-flow", "aria-label": "Flow" }, el("option", { value: "" }, "every flow"));
    const label = el("input", { testid: "filter-label", type: "search", placeholder: "label", "aria-label": "Label",
      value: f.label });
    let timer = null;
    state.addEventListener("change", () => { f.state = state.value; onChange(); });
    flow.addEventListener("change", () => { f.flow = flow.value; onChange(); });
    label.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => { f.label = label.value.trim(); onChange(); }, 300);
    });
    gql("flowChoices").then((data) => {
      for (const item of data.flow || []) flow.append(el("option", { value: item.id }, item.name + " (v" + item.version + ")"));
      flow.value = f.flow;
    }).catch((err) => status(err.message, true));
    return el("div", { class: "toolbar" }, state, flow, label);
  }

  function showRuns() {
    const body = el("tbody", { testid: "runs-body" });
    const older = el("button", { type: "button", testid: "page-older" }, "Older →");
    const newer = el("button", { type: "button", testid: "page-newer" }, "← Newer");
    const empty = el("p", { class: "muted", testid: "runs-empty", hidden: true }, "No flow runs.");
    let rows = [];
    let seen = "";
    let load = null;
    const refresh = () => { seen = ""; load().catch((err) => status(err.message, true)); };
    const onFilter = () => { runsView.cursor = null; refresh(); };
    older.addEventListener("click", () => {
      if (!rows.length) return;
      const last = rows[rows.length - 1];
      runsView.cursor = { t: last.scheduled_start_time, id: last.id, inclusive: false };
      refresh();
    });
    newer.addEventListener("click", async () => {
      if (!rows.length || !runsView.cursor) return;
      try { runsView.cursor = await newerCursor(rows[0]); refresh(); } catch (err) { status(err.message, true); }
    });
    const table = el("table", { testid: "runs-table" }, el("thead", {}, el("tr", {},
      ["State", "Name", "Flow", "Labels", "Scheduled (UTC)", "Start", "End", "Duration", "Agent"]
        .map((h) => el("th", {}, h)))), body);
    main().replaceChildren(el("h1", {}, "Flow runs"), filterBar(onFilter), table, empty,
      el("div", { class: "pager" }, newer, older));
    const mine = generation;
    load = async () => {
      const data = await gql("runs", { where: runsWhere(),
        order_by: [{ scheduled_start_time: "desc" }, { id: "desc" }], limit: PAGE_SIZE });
      if (mine !== generation) return;
      rows = data.flow_run || [];
      const text = JSON.stringify(rows);
      if (text !== seen) body.replaceChildren(...rows.map(runRow));
      else rows.forEach((run, i) => {
        const cell = body.children[i] && body.children[i].querySelector(".col-duration");
        if (cell && !run.end_time && run.start_time) cell.textContent = duration(run);
      });
      seen = text;
      empty.hidden = rows.length > 0;
      older.disabled = rows.length < PAGE_SIZE;
      newer.disabled = runsView.cursor === null;
    };
    poll(load);
  }

  // ------------------------------------------------------------------ run page

  function detail(name, testid, value) {
    return [el("dt", {}, name), el("dd", { testid }, value)];
  }

  function runDetails(run) {
    return el("dl", { class: "details", testid: "run-details" },
      detail("Flow", "detail-flow", run.flow ? run.flow.name + " (v" + run.flow.version + ")" : ""),
      detail("Project", "detail-project", run.flow && run.flow.project ? run.flow.project.name : ""),
      detail("Run id", "detail-id", run.id),
      detail("Agent", "detail-agent", run.agent ? run.agent.name || run.agent.id : "none yet"),
      detail("Labels", "detail-labels", labels(run.labels)),
      detail("Scheduled (UTC)", "detail-scheduled", formatTime(run.scheduled_start_time)),
      detail("Started", "detail-start", formatTime(run.start_time)),
      detail("Ended", "detail-end", formatTime(run.end_time)),
      detail("Duration", "detail-duration", duration(run)),
      detail("Parameters", "detail-parameters", el("pre", {}, JSON.stringify(run.parameters || {}, null, 2))));
  }

  function history(states) {
    return el("ol", { class: "history", testid: "state-history" }, (states || []).map((s) =>
      el("li", { testid: "state-item" }, el("span", { class: "ts" }, formatTime(s.timestamp)), " ",
        badge(s.state, {}, true), " ", el("span", { class: "msg" }, s.message || ""))));
  }

  function taskRuns(list) {
    return el("table", { testid: "task-runs" },
      el("thead", {}, el("tr", {}, ["Task", "Map index", "State", "Since (UTC)"].map((h) => el("th", {}, h)))),
      el("tbody", {}, (list || []).map((tr) => el("tr", { testid: "task-run-row", "data-task-run-id": tr.id },
        el("td", {}, tr.name || (tr.task && (tr.task.name || tr.task.slug)) || tr.id),
        el("td", {}, tr.map_index < 0 ? "" : String(tr.map_index)),
        el("td", {}, badge(tr.state, {}, true)),
        timeCell(tr.state_start_time || tr.state_timestamp, "")))));
  }

  function logLine(line) {
    return el("div", { testid: "log-line", class: "log-line level-" + cssName(line.level), "data-log-id": line.id },
      el("span", { class: "ts" }, formatTime(line.timestamp)), " ",
      el("span", { class: "lvl" }, line.level || ""), " ",
      el("span", { class: "src" }, line.name || ""), " | ",
      el("span", { class: "msg" }, line.message || ""));
  }

  function logFollower(runId, box) {
    const seen = new Map(); // id -> timestamp (ms), pruned behind the window
    const lines = []; // {key, node}, ordered
    let since = null;
    let quietAfterEnd = 0;
    const insert = (line) => {
      const key = line.timestamp + "\u0000" + line.id;
      const node = logLine(line);
      let i = lines.length;
      while (i > 0 && lines[i - 1].key > key) i -= 1;
      if (i === lines.length) box.append(node); else box.insertBefore(node, lines[i].node);
      lines.splice(i, 0, { key, node });
    };
    return async (finished) => {
      if (finished && quietAfterEnd > 3) return;
      const where = { flow_run_id: { _eq: runId } };
      if (since) where.timestamp = { _gte: since };
      const data = await gql("logs", { where, limit: LOG_BATCH });
      const batch = data.log || [];
      const stick = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
      let added = 0;
      for (const line of batch) {
        if (seen.has(line.id)) continue;
        seen.set(line.id, new Date(line.timestamp).getTime());
        insert(line);
        added += 1;
      }
      if (stick && added) box.scrollTop = box.scrollHeight;
      quietAfterEnd = finished && !added ? quietAfterEnd + 1 : 0;
      if (batch.length >= LOG_BATCH) since = batch[batch.length - 1].timestamp;
      else if (lines.length) {
        const newest = Math.max(...Array.from(seen.values()));
        const floor = newest - LOG_LOOKBACK_MS;
        if (!since || floor > new Date(since).getTime()) since = new Date(floor).toISOString();
      }
      const cut = since ? new Date(since).getTime() : -Infinity;
      for (const [id, at] of seen) if (at < cut - 1) seen.delete(id);
    };
  }

  function cancelButton(run, errors) {
    const button = el("button", { type: "button", class: "danger", testid: "cancel-run" }, "Cancel run");
    button.addEventListener("click", async () => {
      button.disabled = true;
      errors.replaceChildren();
      try {
        await gql("cancelRun", { input: { flow_run_id: run.id } });
      } catch (err) {
        errors.replaceChildren(errorBox("action-error", "Cancel failed: " + err.message));
        button.disabled = false;
      }
    });
    return button;
  }

  function showRun(runId) {
    const head = el("div", {});
    const actions = el("div", { class: "actions" });
    const errors = el("div", {});
    const info = el("div", {});
    const logs = el("div", { class: "logs", testid: "run-logs" });
    main().replaceChildren(el("p", {}, el("a", { href: "#/runs" }, "← all runs")), head, actions, errors, info,
      el("h2", {}, "Logs"), logs);
    const follow = logFollower(runId, logs);
    let seen = "";
    let cancel = null;
    poll(async () => {
      const data = await gql("run", { id: runId });
      const run = data.flow_run_by_pk;
      if (!run) {
        head.replaceChildren(errorBox("run-not-found", "Flow run " + runId + " not found."));
        return;
      }
      const finished = FINISHED.has(run.state);
      const text = JSON.stringify(run);
      if (text !== seen) {
        seen = text;
        const failure = FAILED.has(run.state) ? [errorBox("run-error", run.state_message || run.state)] : [];
        head.replaceChildren(el("h1", { testid: "run-title" }, run.name || run.id), " ",
          badge(run.state, { testid: "run-state" }), ...failure);
        info.replaceChildren(runDetails(run), el("h2", {}, "State history"), history(run.states),
          el("h2", {}, "Task runs"), taskRuns(run.task_runs));
      }
      if (!finished && canAct()) {
        if (!cancel) { cancel = cancelButton(run, errors); actions.replaceChildren(cancel); }
      } else if (cancel) { cancel = null; actions.replaceChildren(); }
      await follow(finished);
    });
  }

  // ------------------------------------------------------------------ flows page

  function createForm(flow) {
    const params = el("textarea", { testid: "run-parameters", "aria-label": "Parameters (JSON)", spellcheck: "false" });
    params.value = "{}";
    const name = el("input", { testid: "run-name", type: "text", placeholder: "optional", "aria-label": "Run name" });
    const submit = el("button", { type: "submit", testid: "create-run-submit" }, "Create run");
    const errors = el("div", {});
    const form = el("form", { class: "panel", testid: "create-run-form", "data-flow-id": flow.id },
      el("strong", {}, "New run of " + flow.name + " (v" + flow.version + ")"),
      el("label", {}, "Parameters (JSON object)"), params,
      el("label", {}, "Run name"), name, el("div", { class: "actions" }, submit), errors);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      errors.replaceChildren();
      let parameters;
      try { parameters = JSON.parse(params.value || "{}"); } catch (err) {
        errors.replaceChildren(errorBox("action-error", "Parameters are not valid JSON: " + err.message));
        return;
      }
      if (parameters === null || typeof parameters !== "object" || Array.isArray(parameters)) {
        errors.replaceChildren(errorBox("action-error", "Parameters must be a JSON object, e.g. {\"x\": 1}."));
        return;
      }
      const input = { flow_id: flow.id, parameters };
      if (name.value.trim()) input.flow_run_name = name.value.trim();
      submit.disabled = true;
      try {
        const data = await gql("createRun", { input });
        location.hash = "#/runs/" + encodeURIComponent(data.create_flow_run.id);
      } catch (err) {
        errors.replaceChildren(errorBox("action-error", "Create failed: " + err.message));
        submit.disabled = false;
      }
    });
    return form;
  }

  function flowRow(flow, openForm) {
    const recent = (flow.flow_runs || []).map((run) => el("a", { href: "#/runs/" + encodeURIComponent(run.id),
      title: (run.name || run.id) + " " + formatTime(run.scheduled_start_time) }, badge(run.state,
      { testid: "flow-recent-run" }, true)));
    const create = canAct() ? el("button", { type: "button", testid: "create-run", onclick: () => openForm(flow) },
      "Create run") : null;
    return el("tr", { testid: "flow-row", "data-flow-id": flow.id },
      el("td", { class: "col-name" }, flow.name),
      el("td", {}, flow.project ? flow.project.name : ""),
      el("td", {}, String(flow.version)),
      el("td", {}, flow.is_schedule_active ? "active" : "paused"),
      el("td", {}, recent),
      el("td", {}, create));
  }

  function showFlows() {
    const body = el("tbody", {});
    const formSlot = el("div", {});
    const openForm = (flow) => formSlot.replaceChildren(createForm(flow));
    const empty = el("p", { class: "muted", hidden: true }, "No flows registered.");
    main().replaceChildren(el("h1", {}, "Flows"), formSlot,
      el("table", { testid: "flows-table" }, el("thead", {}, el("tr", {},
        ["Name", "Project", "Version", "Schedule", "Latest runs", ""].map((h) => el("th", {}, h)))), body), empty);
    let seen = "";
    poll(async () => {
      const data = await gql("flows");
      const flows = data.flow || [];
      const text = JSON.stringify(flows);
      if (text !== seen) body.replaceChildren(...flows.map((f) => flowRow(f, openForm)));
      seen = text;
      empty.hidden = flows.length > 0;
    });
  }

  // ------------------------------------------------------------------ agents page

  function showAgents() {
    const body = el("tbody", {});
    const empty = el("p", { class: "muted", hidden: true }, "No agent has registered.");
    main().replaceChildren(el("h1", {}, "Agents"),
      el("table", { testid: "agents-table" }, el("thead", {}, el("tr", {},
        ["Name", "Labels", "Last queried", "Type", "Core version"].map((h) => el("th", {}, h)))), body), empty);
    poll(async () => {
      const data = await gql("agents");
      const agents = data.agent || [];
      body.replaceChildren(...agents.map((a) => el("tr", { testid: "agent-row", "data-agent-id": a.id },
        el("td", { class: "col-name" }, a.name || a.id),
        el("td", {}, labels(a.labels)),
        el("td", { title: a.last_queried || null }, ago(a.last_queried)),
        el("td", {}, a.type || ""),
        el("td", {}, a.core_version || ""))));
      empty.hidden = agents.length > 0;
    });
  }

  // ------------------------------------------------------------------ login

  async function checkToken() {
    const data = await gql("authInfo");
    const info = data.auth_info || {};
    session.scope = info.api_token_scope || null;
    session.tenant = info.tenant_id || null;
  }

  function showLogin(message) {
    generation += 1;
    document.getElementById("nav").hidden = true;
    document.getElementById("logout").hidden = true;
    document.getElementById("whoami").textContent = "";
    const input = el("input", { testid: "login-token", type: "password", autocomplete: "off",
      "aria-label": "API token", placeholder: "API token (local-agent-server token create …)" });
    const submit = el("button", { type: "submit", testid: "login-submit" }, "Log in");
    const errors = el("div", {}, message ? errorBox("login-error", message) : null);
    const form = el("form", { class: "panel login" }, el("h1", {}, "Log in"),
      el("p", { class: "muted" }, "This server needs an API token. It is kept in this tab only."),
      input, el("div", { class: "actions" }, submit), errors);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const value = input.value.trim();
      errors.replaceChildren();
      if (!value || !/^[\x21-\x7e]+$/.test(value)) {
        errors.replaceChildren(errorBox("login-error", "An API token is printable ASCII without spaces."));
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, value);
      try {
        await checkToken();
      } catch (err) {
        sessionStorage.removeItem(TOKEN_KEY);
        errors.replaceChildren(errorBox("login-error", err.message));
        return;
      }
      loggedIn();
    });
    main().replaceChildren(form);
    input.focus();
  }

  function logout(message) {
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (_e) { /* storage unavailable */ }
    session.scope = null;
    showLogin(message || "");
  }

  function loggedIn() {
    document.getElementById("nav").hidden = false;
    document.getElementById("logout").hidden = session.authMode !== "token";
    const who = session.authMode === "token" ? "token scope " + (session.scope || "?") : "no authentication";
    document.getElementById("whoami").textContent = who;
    route();
  }

  // ------------------------------------------------------------------ routing

  function route() {
    if (session.authMode === "token" && !token()) { showLogin(""); return; }
    generation += 1;
    const hash = location.hash || "#/runs";
    const run = /^#\/runs\/([0-9a-fA-F-]{1,64})$/.exec(hash);
    for (const link of document.querySelectorAll("#nav a")) {
      link.classList.toggle("active", hash.startsWith(link.getAttribute("href")));
    }
    if (run) showRun(run[1]);
    else if (hash === "#/flows") showFlows();
    else if (hash === "#/agents") showAgents();
    else showRuns();
  }

  async function start() {
    try {
      const data = await gql("api");
      session.authMode = (data.api && data.api.auth_mode) || "none";
    } catch (err) {
      main().replaceChildren(errorBox("page-error", "Cannot reach the API: " + err.message));
      setTimeout(start, POLL_MS);
      return;
    }
    if (session.authMode === "token") {
      if (!token()) { showLogin(""); return; }
      try { await checkToken(); } catch (err) { logout(err.message); return; }
    }
    loggedIn();
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("logout").addEventListener("click", () => logout(""));
    window.addEventListener("hashchange", () => { if (session.authMode) route(); });
    start();
  });
})();
