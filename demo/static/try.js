"use strict";
// The try-it page: fill the form from /api/options, sign through /api/sign, render the
// service's answer. Everything from the answer is inserted as text or escaped HTML.

const $ = (id) => document.getElementById(id);

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

// Inline markdown on escaped text: `code`, **bold**, *italic*, [label](http(s) url).
function inline(text) {
  return escapeHtml(text)
    .replace(/`([^`]+)`/g, "<code>$1</code>")
    .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
    .replace(/\*([^*]+)\*/g, "<em>$1</em>")
    .replace(/\[([^\]]+)\]\((https?:\/\/[^)\s]+)\)/g,
      '<a href="$2" target="_blank" rel="noopener noreferrer">$1</a>');
}

// The markdown card details use: paragraphs and nested "- " lists.
function markdown(text) {
  const out = [];
  const open = []; // indentation of each open <ul>
  let paragraph = [];
  const flush = () => {
    if (paragraph.length) out.push(`<p>${inline(paragraph.join(" "))}</p>`);
    paragraph = [];
  };
  for (const line of String(text).split("\n")) {
    const item = line.match(/^(\s*)[-*] (.*)$/);
    if (item) {
      flush();
      const indent = item[1].length;
      while (open.length && indent < open[open.length - 1]) { out.push("</ul>"); open.pop(); }
      if (!open.length || indent > open[open.length - 1]) { out.push("<ul>"); open.push(indent); }
      out.push(`<li>${inline(item[2])}</li>`);
    } else if (!line.trim()) {
      flush();
      while (open.length) { out.push("</ul>"); open.pop(); }
    } else {
      if (open.length) { while (open.length) { out.push("</ul>"); open.pop(); } }
      paragraph.push(line.trim());
    }
  }
  flush();
  while (open.length) { out.push("</ul>"); open.pop(); }
  return out.join("");
}

function option(value, label) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = label;
  return element;
}

let options = null;

function choosePatient() {
  const patient = options.patients.find((p) => p.id === $("patient").value);
  $("encounter").value = (patient && patient.encounter) || "";
  const order = patient && patient.orders[0];
  if (order) {
    $("hcpcs").value = order.hcpcs || "";
    $("drug").value = order.drug && options.drugs.includes(order.drug) ? order.drug : "";
    if (order.drug && !options.drugs.includes(order.drug)) {
      $("drug").append(option(order.drug, order.drug));
      options.drugs.push(order.drug);
      $("drug").value = order.drug;
    }
    $("route").value = order.route || "";
  }
}

async function load() {
  const response = await fetch("/api/options");
  options = await response.json();
  for (const patient of options.patients) $("patient").append(option(patient.id, patient.label));
  $("hcpcs").append(option("", "(no pump)"));
  for (const pump of options.pumps) $("hcpcs").append(option(pump.code, `${pump.code} ${pump.display}`));
  $("drug").append(option("", "(no drug)"));
  for (const drug of options.drugs) $("drug").append(option(drug, drug));
  $("route").append(option("", "(the drug's usual route)"));
  for (const route of options.routes) $("route").append(option(route, route));
  $("crd_version").append(option("", "(service default)"));
  for (const version of options.crd_versions) $("crd_version").append(option(version, version));
  $("patient").addEventListener("change", choosePatient);
  choosePatient();
}

function parts(extension) {
  const found = {};
  for (const part of extension.extension || []) {
    const key = Object.keys(part).find((k) => k.startsWith("value"));
    const value = part[key];
    (found[part.url] = found[part.url] || []).push(value);
  }
  return found;
}

function show(value) {
  if (value === undefined || value === null) return "";
  if (typeof value === "object") return value.text || value.reference || JSON.stringify(value);
  return String(value);
}

function renderDecisions(response) {
  const box = $("decisions");
  box.replaceChildren();
  const rows = [];
  for (const action of response.systemActions || []) {
    const resource = action.resource || {};
    for (const extension of resource.extension || []) {
      if (!String(extension.url).endsWith("ext-coverage-information")) continue;
      rows.push({ resource, parts: parts(extension) });
    }
  }
  if (!rows.length) {
    const note = document.createElement("p");
    note.textContent = "No coverage-information on the orders (see the cards).";
    box.append(note);
    return;
  }
  const table = document.createElement("table");
  table.className = "decision";
  const names = ["covered", "pa-needed", "doc-needed", "info-needed", "reason", "questionnaire", "coverage-assertion-id"];
  const head = table.insertRow();
  for (const name of ["order", ...names]) {
    const th = document.createElement("th");
    th.textContent = name;
    head.append(th);
  }
  for (const { resource, parts: found } of rows) {
    const row = table.insertRow();
    row.dataset.order = `${resource.resourceType}/${resource.id}`;
    row.insertCell().textContent = `${resource.resourceType}/${resource.id}`;
    for (const name of names) {
      const cell = row.insertCell();
      cell.textContent = (found[name] || []).map(show).join(", ");
      if (name === "covered") cell.className = `covered-${cell.textContent}`;
    }
  }
  box.append(table);
}

function renderCard(card) {
  const element = document.createElement("article");
  element.className = `card ${card.indicator || ""}`;
  const title = document.createElement("h3");
  title.textContent = card.summary;
  element.append(title);
  const source = document.createElement("div");
  source.className = "source";
  const topic = card.source && card.source.topic ? ` · ${card.source.topic.display || card.source.topic.code}` : "";
  source.textContent = `${card.indicator} · ${(card.source && card.source.label) || ""}${topic}`;
  element.append(source);
  if (card.detail) {
    const detail = document.createElement("div");
    detail.className = "detail";
    detail.innerHTML = markdown(card.detail);
    element.append(detail);
  }
  if ((card.links || []).length) {
    const links = document.createElement("div");
    links.className = "links";
    for (const link of card.links) {
      const anchor = document.createElement("a");
      anchor.href = link.url;
      anchor.target = "_blank";
      anchor.rel = "noopener noreferrer";
      if (link.type === "smart") {
        anchor.className = "launch";
        anchor.textContent = link.label;
        anchor.addEventListener("click", (event) => launchApp(event, link));
      } else {
        anchor.textContent = link.label;
      }
      links.append(anchor);
    }
    element.append(links);
  }
  if ((card.suggestions || []).length) {
    const suggestions = document.createElement("div");
    suggestions.className = "suggestions";
    for (const suggestion of card.suggestions) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = suggestion.label;
      button.title = (suggestion.actions || []).map((a) => `${a.type} ${a.description || ""}`).join("; ");
      button.addEventListener("click", () => { button.textContent = `Accepted: ${suggestion.label}`; button.disabled = true; });
      suggestions.append(button);
    }
    element.append(suggestions);
  }
  if ((card.overrideReasons || []).length) {
    const override = document.createElement("label");
    override.className = "override";
    override.textContent = "Override reason ";
    const select = document.createElement("select");
    select.append(option("", "(choose to override)"));
    for (const reason of card.overrideReasons) select.append(option(reason.code, reason.display || reason.code));
    override.append(select);
    element.append(override);
  }
  return element;
}

let lastRequest = null; // the order-sign request of the answer on screen

// An EHR launch of a card's SMART link: the page's back end registers the launch context
// (patient, orders, Coverage, the link's appContext) and answers the URL to open.
async function launchApp(event, link) {
  event.preventDefault();
  const status = $("status");
  const tab = window.open("about:blank", "_blank"); // opened on the click, not blocked
  try {
    const response = await fetch("/api/launch", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ url: link.url, appContext: link.appContext, request: lastRequest }),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
    if (tab) tab.location.href = answer.url; else window.location.href = answer.url;
    status.className = "";
    status.textContent = "Documentation app launched in a new tab: sign again when it is saved.";
  } catch (error) {
    if (tab) tab.close();
    status.className = "error";
    status.textContent = `Cannot launch the app: ${error.message || error}`;
  }
}

async function sign(event) {
  event.preventDefault();
  const status = $("status");
  status.className = "";
  status.textContent = "Signing ...";
  $("sign").disabled = true;
  const form = Object.fromEntries(new FormData($("order")).entries());
  try {
    const response = await fetch("/api/sign", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(form),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
    if (answer.status !== 200) {
      const issues = ((answer.response || {}).issue || []).map((i) => i.diagnostics).join("; ");
      throw new Error(`the service answered HTTP ${answer.status}: ${issues}`);
    }
    lastRequest = answer.request;
    renderDecisions(answer.response);
    const cards = $("cards");
    cards.replaceChildren(...(answer.response.cards || []).map(renderCard));
    if (!(answer.response.cards || []).length) cards.textContent = "No cards.";
    $("raw").textContent = JSON.stringify({ request: answer.request, response: answer.response }, null, 2);
    $("result").hidden = false;
    status.textContent = `Signed: ${(answer.response.cards || []).length} card(s).`;
  } catch (error) {
    status.className = "error";
    status.textContent = String(error.message || error);
  } finally {
    $("sign").disabled = false;
  }
}

$("order").addEventListener("submit", sign);
load();
