// The garden's page: asks for a key once (kept in this tab's sessionStorage, sent in a
// header, never in a URL), then polls /garden/usage, which never wakes a GPU.
"use strict";

const KEY_ITEM = "garden-key";
const POLL_MS = 5000;
const COLORS = ["#2e7d32", "#1565c0", "#ef6c00", "#6a1b9a", "#c62828", "#00838f"];
let timer = null;

function $(id) { return document.getElementById(id); }

function money(x) { return "$" + (x === 0 ? "0" : x < 1 ? x.toFixed(4) : x < 100 ? x.toFixed(2) : x.toFixed(0)); }

function duration(s) {
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    const [text, cls] = Array.isArray(cell) ? cell : [cell, ""];
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  return tr;
}

function fill(tableId, rows, empty) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren(...rows);
  if (!rows.length) body.appendChild(row([[empty, "note"]]));
}

function chart(data) {
  const ns = "http://www.w3.org/2000/svg";
  const width = 720, height = 140, pad = 24;
  const names = Object.keys(data.pools);
  const totals = data.hours.map((_, i) => names.reduce((sum, n) => sum + data.pools[n][i], 0));
  const top = Math.max(60, ...totals);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height + pad);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "GPU container time per hour, last 24 hours");
  const bar = (width - pad) / data.hours.length;
  data.hours.forEach((hour, i) => {
    let y = height;
    names.forEach((name, p) => {
      const h = (data.pools[name][i] / top) * (height - 10);
      if (h <= 0) return;
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("x", pad + i * bar + 1);
      rect.setAttribute("y", y - h);
      rect.setAttribute("width", bar - 2);
      rect.setAttribute("height", h);
      rect.setAttribute("fill", COLORS[p % COLORS.length]);
      const title = document.createElementNS(ns, "title");
      title.textContent = `${hour}:00 UTC ${name}: ${duration(data.pools[name][i])}`;
      rect.appendChild(title);
      svg.appendChild(rect);
      y -= h;
    });
    if (i % 6 === 0) {
      const label = document.createElementNS(ns, "text");
      label.setAttribute("x", pad + i * bar);
      label.setAttribute("y", height + 16);
      label.setAttribute("font-size", "10");
      label.textContent = hour.slice(11) + "h";
      svg.appendChild(label);
    }
  });
  const peak = document.createElementNS(ns, "text");
  peak.setAttribute("x", 0);
  peak.setAttribute("y", 12);
  peak.setAttribute("font-size", "10");
  peak.textContent = duration(top);
  svg.appendChild(peak);
  names.forEach((name, p) => {
    const key = document.createElementNS(ns, "text");
    key.setAttribute("x", width - 90 * (names.length - p));
    key.setAttribute("y", 12);
    key.setAttribute("font-size", "10");
    key.setAttribute("fill", COLORS[p % COLORS.length]);
    key.textContent = "■ " + name;
    svg.appendChild(key);
  });
  $("chart").replaceChildren(svg);
}

function render(data) {
  $("who").textContent = data.scope === "own" ? `Your usage (key ${data.viewer})` : `The whole garden (key ${data.viewer})`;
  $("cost-today").textContent = money(data.cost.today);
  $("cost-month").textContent = money(data.cost.month);
  $("in-flight").textContent = String(data.in_flight);
  $("gpu-note").textContent = data.gpu_time === "absent"
    ? "Local mode: GPU time is not measured here (the local Ollama's time is absent), so costs are zero; tokens and requests are counted."
    : "GPU time is container time on Modal, sampled by the gateway; costs are estimates.";
  fill("pools", data.pools.map((p) => {
    const tr = row([p.name, p.gpu, [p.state, `state state-${p.state}`], p.containers ?? "–", duration(p.seconds_today),
      [money(p.cost_today), "num"], [money(p.cost_month), "num"], [String(p.in_flight), "num"]]);
    tr.dataset.pool = p.name;
    tr.dataset.state = p.state;
    return tr;
  }), "no pools (local mode: one local Ollama)");
  fill("keys", data.keys.map((k) => row([k.key, duration(k.seconds_today), [money(k.cost_today), "num"],
    duration(k.seconds_month), [money(k.cost_month), "num"]])), "no GPU time yet");
  fill("tokens", data.tokens.map((t) => row([t.key, t.model, [String(t.prompt), "num"], [String(t.completion), "num"]])), "no tokens yet");
  fill("cold", data.cold_starts.map((c) => row([new Date(c.at * 1000).toISOString().slice(0, 19).replace("T", " "),
    c.pool, c.key, c.model, c.route, c.user_agent, c.wait_s == null ? "–" : `${c.wait_s.toFixed(1)}s`])), "none yet");
  chart(data.chart);
  $("prices").textContent = `Prices as of ${data.prices.as_of}, from ${data.prices.source}.`;
}

function askForKey(message) {
  if (timer) clearInterval(timer);
  timer = null;
  $("garden").hidden = true;
  $("key-form").hidden = false;
  $("key-error").textContent = message || "";
  $("key-input").focus();
}

async function refresh() {
  const key = sessionStorage.getItem(KEY_ITEM);
  if (key === null) { askForKey(); return null; }
  const headers = key ? { Authorization: "Bearer " + key } : {};
  let response;
  try {
    response = await fetch("/garden/usage", { headers, cache: "no-store" });
  } catch (error) {
    $("gpu-note").textContent = "The gateway did not answer: " + error;
    return null;
  }
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => ({}));
    sessionStorage.removeItem(KEY_ITEM);
    askForKey((body.error && (body.error.message || body.error)) || `refused (${response.status})`);
    return null;
  }
  const data = await response.json();
  $("key-form").hidden = true;
  $("garden").hidden = false;
  render(data);
  return data;
}

function start() {
  refresh();
  if (!timer) timer = setInterval(refresh, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_ITEM, $("key-input").value.trim());
    $("key-input").value = "";
    start();
  });
  $("forget").addEventListener("click", () => { sessionStorage.removeItem(KEY_ITEM); askForKey(); });
  if (sessionStorage.getItem(KEY_ITEM) === null) askForKey(); else start();
});

window.garden = { refresh, render };
