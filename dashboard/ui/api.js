// The public /api routes with the session cookie; every state-changing request carries the
// session's CSRF token. The API key itself is sent only once, to POST /api/auth/session.

let csrf = null;

export class ApiError extends Error {
  constructor(status, body) {
    const api = (body && body.error) || `HTTP ${status}`;
    super(api);
    this.status = status;
    this.api = api;
    this.details = body && body.details;
  }
}

export const onSignedOut = { handler: () => {} };

async function parse(response) {
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    if (response.status === 401 && csrf !== null) { csrf = null; onSignedOut.handler(); }
    throw new ApiError(response.status, body);
  }
  return body;
}

export function headers(method, extra = {}) {
  const all = { ...extra };
  if (method !== "GET" && method !== "HEAD" && csrf) all["X-CSRF-Token"] = csrf;
  return all;
}

export async function api(method, path, { body, query, raw } = {}) {
  const url = new URL(`/api${path}`, location.origin);
  for (const [k, v] of Object.entries(query || {})) if (v !== undefined && v !== "") url.searchParams.set(k, v);
  const init = { method, headers: headers(method), credentials: "same-origin" };
  if (raw !== undefined) {
    init.body = raw;
    init.headers["Content-Type"] = "application/octet-stream";
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  return parse(await fetch(url, init));
}

export const get = (path, query) => api("GET", path, { query });
export const post = (path, body, query) => api("POST", path, { body, query });

export async function signIn(apiKey) {
  const info = await api("POST", "/auth/session", { body: { apiKey } });
  csrf = info.csrfToken;
  return info;
}

export async function restore() {
  try {
    const info = await get("/auth/session");
    csrf = info.csrfToken;
    return info;
  } catch (err) {
    if (err.status === 401) return null;
    throw err;
  }
}

export async function signOut() {
  try { await api("DELETE", "/auth/session"); } finally { csrf = null; }
}

export function signedIn() { return csrf !== null; }

// Upload with progress (fetch has no upload progress): raw body, like the SDK.
export function upload(sandboxId, path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    const url = `/api/sandboxes/${sandboxId}/files/upload?path=${encodeURIComponent(path)}`;
    xhr.open("POST", url);
    for (const [k, v] of Object.entries(headers("POST", { "Content-Type": "application/octet-stream" }))) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body));
    };
    xhr.onerror = () => reject(new Error("network error during upload"));
    xhr.send(file);
  });
}

// Server-sent events from a POST (commands/attach): calls onEvent(name, data) per event.
export async function postEvents(path, body, onEvent, signal) {
  const response = await fetch(`/api${path}`, {
    method: "POST", signal, credentials: "same-origin",
    headers: headers("POST", { "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify(body),
  });
  if (!response.ok) await parse(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}
