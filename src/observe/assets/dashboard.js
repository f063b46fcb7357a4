// The sagefed dashboard: renders each view the server pushes on /events (server-sent events).
// No polling: the page changes only when a view arrives.
"use strict";

const RATE_POINTS_MAX = 120;
const $ = (id) => document.getElementById(id);
const fmt = (x, digits = 3) => (x === null || x === undefined ? "-" : Number(x).toFixed(digits));
const short = (id) => (id.length > 14 ? id.slice(0, 14) + "…" : id);

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function fill(tbody, rows, render) {
  const body = $(tbody);
  body.replaceChildren(...rows.map((row) => {
    const tr = document.createElement("tr");
    render(row, tr);
    return tr;
  }));
}

const rateChart = new Chart($("rate-chart"), {
  type: "line",
  data: { labels: [], datasets: [{ label: "delegations/s", data: [], borderColor: "#2f6fde", tension: 0.2, pointRadius: 0 }] },
  options: { animation: false, maintainAspectRatio: false, scales: { y: { beginAtZero: true } } },
});

const balanceChart = new Chart($("balance-chart"), {
  type: "bar",
  data: { labels: [], datasets: [
    { label: "balance", data: [], backgroundColor: "#2f6fde" },
    { label: "locked", data: [], backgroundColor: "#f0a020" },
  ] },
  options: { animation: false, maintainAspectRatio: false, indexAxis: "y",
             scales: { x: { stacked: true }, y: { stacked: true } } },
});

async function cancelTask(taskId, button) {
  button.disabled = true;
  const reply = await fetch(`/api/cancel/${encodeURIComponent(taskId)}`,
                            { method: "POST", headers: { "x-sagefed-cancel": "1" } });
  button.textContent = reply.ok ? "cancelled" : `refused (${reply.status})`;
}

function render(view) {
  $("rate").textContent = fmt(view.delegations_per_second, 1);
  $("supply").textContent = fmt(view.supply.total, 2);
  const audit = $("audit");
  audit.textContent = view.supply.audit_clean ? "clean" : `${view.supply.violations.length} violation(s)`;
  audit.className = view.supply.audit_clean ? "ok" : "bad";
  $("supply-line").textContent =
    `balances ${fmt(view.supply.balances)} + locked ${fmt(view.supply.locked)} = supply ${fmt(view.supply.total)} ATP` +
    (view.supply.audit_clean ? "" : " — " + view.supply.violations.join("; "));
  $("cancel-as").textContent = view.cancel_as ? `cancel as ${view.cancel_as}` : "read-only";

  fill("platforms", view.platforms, (p, tr) => {
    tr.dataset.platform = p.platform;
    tr.append(cell(p.platform), cell(p.healthy ? "healthy" : "stale", p.healthy ? "ok" : "stale"),
              cell(p.load, "num"), cell(p.capacity, "num"), cell(p.operations.join(", ")),
              cell(p.settled, "num"), cell(fmt(p.score, 2), "num"),
              cell(p.refuted + (p.on_probation ? " (on probation)" : ""), p.on_probation ? "num stale" : "num"));
  });
  fill("accounts", view.accounts, (a, tr) => {
    tr.dataset.account = a.lct;
    tr.append(cell(a.lct), cell(fmt(a.balance), "num balance"), cell(fmt(a.locked), "num"),
              cell(fmt(a.earned), "num"), cell(fmt(a.spent), "num"));
  });
  fill("in-flight", view.in_flight, (t, tr) => {
    tr.dataset.task = t.task_id;
    tr.append(cell(short(t.task_id)), cell(`${t.delegator} → ${t.executor}`), cell(t.operation),
              cell(t.state), cell(fmt(t.budget), "num"), cell(fmt(t.age_seconds, 1), "num"));
    const td = document.createElement("td");
    if (view.cancel_as === t.delegator) {
      const button = document.createElement("button");
      button.textContent = "cancel";
      button.onclick = () => cancelTask(t.task_id, button);
      td.append(button);
    }
    tr.append(td);
  });
  fill("recent", view.recent, (o, tr) => {
    tr.dataset.task = o.task_id;
    const outcome = o.reason ? `${o.outcome} (${o.reason})` : o.outcome;
    tr.append(cell(short(o.task_id)), cell(`${o.delegator} → ${o.executor}`), cell(o.operation),
              cell(outcome, o.outcome === "committed" ? "ok" : "bad"), cell(fmt(o.quality, 2), "num"),
              cell(fmt(o.latency_ms, 0), "num"), cell(fmt(o.paid, 4), "num"), cell(fmt(o.refunded, 4), "num"));
  });
  fill("dead", view.dead_letters, (d, tr) => {
    tr.append(cell(d.sequence, "num"), cell(d.subject), cell(d.reason));
  });
  if (view.dead_letters_unreadable) {
    const tr = document.createElement("tr");
    const td = cell(view.dead_letters_unreadable);
    td.colSpan = 3;
    tr.append(td);
    $("dead").append(tr);
  }

  const when = new Date(view.now * 1000).toLocaleTimeString();
  rateChart.data.labels.push(when);
  rateChart.data.datasets[0].data.push(view.delegations_per_second);
  if (rateChart.data.labels.length > RATE_POINTS_MAX) {
    rateChart.data.labels.shift();
    rateChart.data.datasets[0].data.shift();
  }
  rateChart.update();
  balanceChart.data.labels = view.accounts.map((a) => a.lct.replace("lct:web4:agent:", ""));
  balanceChart.data.datasets[0].data = view.accounts.map((a) => a.balance);
  balanceChart.data.datasets[1].data = view.accounts.map((a) => a.locked);
  balanceChart.update();
  window.sagefedViews = (window.sagefedViews || 0) + 1;
}

function connect() {
  const events = new EventSource("/events");
  events.addEventListener("view", (e) => {
    $("connection").textContent = "live";
    $("connection").className = "live";
    render(JSON.parse(e.data));
  });
  events.onerror = () => {
    $("connection").textContent = "reconnecting";
    $("connection").className = "down";
  };
}

window.sagefedLoads = (window.sagefedLoads || 0) + 1;
connect();
