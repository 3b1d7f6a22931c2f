// The jobs page: start an export, keep browsing, be told when it is done.
//
// No framework, no build step. Three rules the code keeps:
//
// 1. Every text that comes from the server goes in with `textContent`,
//    never `innerHTML`: a job's error or an article title is data, not
//    markup. (The Content-Security-Policy would block an injected script
//    anyway; the two together are belt and braces.)
// 2. One click, one job: the export request carries an `Idempotency-Key`
//    made when the user clicks, kept until that job is finished, and sent
//    again with every retry and every further click meanwhile, so a double
//    click, a retry after a lost answer, or a reload mid-request all find
//    the same job on the server.
// 3. Be told, do not ask: the page follows the job on one Server-Sent
//    Events stream (`GET /jobs/{id}/events`); if that fails, it asks
//    `GET /jobs/{id}` once a second. Either way the user keeps browsing.
'use strict';

(() => {
  const PENDING = 'part4.pending-export';
  const POLL_MS = 1000;
  const STREAM_ERRORS_BEFORE_POLLING = 3;
  const POST_ATTEMPTS = 3;

  const $ = (id) => document.getElementById(id);
  const forcePoll = new URLSearchParams(location.search).get('transport') === 'poll';

  // The export not finished yet: `{key, id}` (`id` null until the server
  // answered). In sessionStorage, so a reload keeps it for this tab.
  let pending = readPending();
  // How the page follows the current job.
  let following = null;

  function readPending() {
    try {
      const p = JSON.parse(sessionStorage.getItem(PENDING) || 'null');
      return p && typeof p.key === 'string' ? p : null;
    } catch (_) {
      return null;
    }
  }

  function savePending() {
    try {
      if (pending) sessionStorage.setItem(PENDING, JSON.stringify(pending));
      else sessionStorage.removeItem(PENDING);
    } catch (_) {
      // Storage refused (private mode): the key lives in memory only.
    }
  }

  // An Idempotency-Key: a random UUID (1 to 64 of [A-Za-z0-9_-]).
  // `crypto.randomUUID` exists only in secure contexts (https, localhost);
  // `getRandomValues` everywhere.
  function newKey() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // One request; throws only when no answer came (network down).
  async function api(method, path, body, headers) {
    const init = { method, credentials: 'same-origin', headers: Object.assign({}, headers) };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    let data = null;
    if ((res.headers.get('content-type') || '').includes('json')) {
      try {
        data = await res.json();
      } catch (_) {
        data = null;
      }
    }
    return { status: res.status, headers: res.headers, data };
  }

  // The server's own words when it sent some, else a fallback.
  function reason(res, fallback) {
    return res.data && typeof res.data.error === 'string' ? res.data.error : fallback;
  }

  // A link the page builds from server data must stay on this site: a
  // path, or null. Browsers read `//host` and `/\host` as another site.
  function localPath(url) {
    return typeof url === 'string' && /^\/(?![\/\\])/.test(url) ? url : null;
  }

  const isFinished = (job) => job.status === 'done' || job.status === 'failed';

  // ------------------------------------------------------------------
  // Logging in and out.

  function showLogin(message) {
    stopFollowing();
    $('app-section').hidden = true;
    $('login-section').hidden = false;
    $('login-error').textContent = message || '';
    $('username').focus();
  }

  function showApp(me) {
    $('login-section').hidden = true;
    $('app-section').hidden = false;
    $('who').textContent = me.username;
    refreshList();
    resumePending();
  }

  async function checkSession() {
    try {
      const res = await api('GET', '/me');
      if (res.status === 200 && res.data) showApp(res.data);
      else showLogin();
    } catch (_) {
      showLogin('The server cannot be reached. Reload the page to try again.');
    }
  }

  async function login(event) {
    event.preventDefault();
    const username = $('username').value.trim();
    const password = $('password').value;
    if (!username || !password) {
      $('login-error').textContent = 'Type your username and your password.';
      return;
    }
    $('login-button').disabled = true;
    try {
      const res = await api('POST', '/login', { username, password });
      if (res.status === 200 && res.data) {
        $('password').value = '';
        showApp(res.data);
      } else if (res.status === 429) {
        const after = res.headers.get('retry-after');
        $('login-error').textContent =
          reason(res, 'Too many attempts.') + (after ? ` Try again in ${after} s.` : '');
      } else {
        $('login-error').textContent = reason(res, `Login failed (HTTP ${res.status}).`);
      }
    } catch (_) {
      $('login-error').textContent = 'The server cannot be reached: try again.';
    } finally {
      $('login-button').disabled = false;
    }
  }

  async function logout() {
    try {
      await api('POST', '/logout');
    } catch (_) {
      // Logged out here either way.
    }
    pending = null;
    savePending();
    $('job').hidden = true;
    showLogin('Logged out.');
  }

  // ------------------------------------------------------------------
  // Starting the export.

  async function startExport() {
    $('problem').textContent = '';
    if (!pending) {
      // Made here, synchronously: a second click arriving before the first
      // answer finds it and sends the same key.
      pending = { key: newKey(), id: null };
      savePending();
    }
    const key = pending.key;
    showStatus('sending', 'Sending your request…');
    let res = null;
    for (let attempt = 1; attempt <= POST_ATTEMPTS; attempt += 1) {
      try {
        res = await api('POST', '/jobs', { kind: 'export' }, { 'Idempotency-Key': key });
        break;
      } catch (_) {
        // No answer: the job may or may not exist. Retrying with the same
        // key is safe: the server answers with the job it already made.
        if (attempt < POST_ATTEMPTS) await sleep(attempt * 1000);
      }
    }
    if (!res) {
      showStatus('refused', 'The server did not answer. Click again: it is safe, the same job is found or made once.');
      return;
    }
    const replayed = res.headers.get('idempotent-replayed') === 'true';
    if (res.status === 202 && res.data && typeof res.data.id === 'string') {
      if (pending && pending.key === key) {
        pending.id = res.data.id;
        savePending();
      }
      follow(res.data, replayed);
      refreshList();
    } else if (res.status === 200) {
      // `--jobs sync`: the server did the job inside the request and
      // answered with the document itself.
      const id = res.headers.get('x-job-id');
      pending = null;
      savePending();
      render({ id, status: 'done', progress: 100, result_url: id ? `/jobs/${id}/result` : null });
      $('transport').textContent = 'This server did the job inside the request (--jobs sync): you waited for all of it.';
      refreshList();
    } else if (res.status === 503) {
      // Refused at the door (the queue is full or unreachable): nothing
      // is in work. Say so, and when to come back (`Retry-After`), unless
      // the server's own words already say it.
      const after = res.headers.get('retry-after');
      const why = reason(res, 'the server is too busy to take the job.');
      const when = after && !/try again/i.test(why) ? ` Try again in ${after} seconds.` : '';
      showStatus('refused', `Not started: ${why}${when}`);
      refreshList();
    } else if (res.status === 401) {
      showLogin('Your session ended: log in again.');
    } else {
      // A request the server refuses as it is (4xx) will not get better
      // by sending it again: the next click makes a new key.
      pending = null;
      savePending();
      showStatus('refused', `Not started: ${reason(res, `HTTP ${res.status}`)}`);
    }
  }

  // The pending export (job `id`) is settled: the next click is a new job.
  function finishPending(id) {
    if (pending && pending.id === id) {
      pending = null;
      savePending();
    }
  }

  // After a reload: pick up the job this tab was waiting for.
  async function resumePending() {
    if (!pending || !pending.id) return;
    try {
      const res = await api('GET', `/jobs/${encodeURIComponent(pending.id)}`);
      if (res.status === 200 && res.data) follow(res.data, false);
      else if (res.status === 404) {
        pending = null;
        savePending();
      }
    } catch (_) {
      // Not now; the list still shows it.
    }
  }

  // ------------------------------------------------------------------
  // Following a job: Server-Sent Events, else polling.

  function stopFollowing() {
    if (!following) return;
    if (following.stream) following.stream.close();
    if (following.timer) clearTimeout(following.timer);
    following = null;
  }

  function follow(job, replayed) {
    stopFollowing();
    render(job, replayed);
    if (isFinished(job)) {
      finished(job);
      return;
    }
    following = { id: job.id, stream: null, timer: null, last: job.status };
    if (forcePoll || typeof EventSource === 'undefined') {
      $('transport').textContent = 'Checking GET /jobs/{id} every second (polling).';
      poll(following);
    } else {
      stream(following);
    }
  }

  function stream(f) {
    $('transport').textContent = 'Live updates: one Server-Sent Events stream, the server tells this page.';
    const es = new EventSource(`/jobs/${encodeURIComponent(f.id)}/events`);
    f.stream = es;
    let errors = 0;
    const onJob = (event) => {
      if (following !== f) return;
      errors = 0;
      let job;
      try {
        job = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      update(f, job);
    };
    es.addEventListener('progress', onJob);
    es.addEventListener('done', onJob);
    es.addEventListener('failed', onJob);
    es.onerror = () => {
      if (following !== f) return;
      errors += 1;
      // A stream that ends early (the server's EVENTS_MAX_SECS, a clone
      // restarting) reconnects by itself; one that cannot open at all
      // (CLOSED), or keeps failing, is given up for polling.
      if (es.readyState === EventSource.CLOSED || errors >= STREAM_ERRORS_BEFORE_POLLING) {
        es.close();
        f.stream = null;
        $('transport').textContent =
          'Live updates failed: checking GET /jobs/{id} every second instead (polling).';
        poll(f);
      }
    };
  }

  function poll(f) {
    const tick = async () => {
      if (following !== f) return;
      try {
        const res = await api('GET', `/jobs/${encodeURIComponent(f.id)}`);
        if (following !== f) return;
        if (res.status === 200 && res.data) {
          update(f, res.data);
          if (isFinished(res.data)) return;
        } else if (res.status === 401) {
          showLogin('Your session ended: log in again.');
          return;
        } else if (res.status === 404) {
          showStatus('failed', 'This job is not yours, or no longer exists.');
          stopFollowing();
          return;
        }
        // 5xx: the server is busy or restarting; the next tick retries.
      } catch (_) {
        // No answer: the next tick retries.
      }
      f.timer = setTimeout(tick, POLL_MS);
    };
    tick();
  }

  function update(f, job) {
    render(job, false);
    if (job.status !== f.last) {
      f.last = job.status;
      refreshList();
    }
    if (isFinished(job)) {
      stopFollowing();
      finished(job);
    }
  }

  function finished(job) {
    finishPending(job.id);
    refreshList();
  }

  // ------------------------------------------------------------------
  // Showing a job.

  function showStatus(state, text) {
    $('job').hidden = false;
    const status = $('status');
    status.dataset.state = state;
    status.textContent = text;
  }

  function render(job, replayed) {
    const progress = Math.max(0, Math.min(100, Number(job.progress) || 0));
    $('job').hidden = false;
    $('job').dataset.jobId = job.id || '';
    $('progress').value = progress;
    $('progress-text').textContent = `${progress} %`;
    const again = replayed ? 'You had already asked: this is the same job. ' : '';
    let text;
    switch (job.status) {
      case 'queued':
        text = job.error
          ? `Queued again after a failed attempt (${job.error}). Keep browsing: this page tells you when it is done.`
          : 'Queued: a worker will take it soon. Keep browsing: this page tells you when it is done.';
        break;
      case 'running':
        text = `Running: ${progress} % done. Keep browsing.`;
        break;
      case 'done':
        text = 'Done: your export is ready.';
        break;
      case 'failed':
        text = `Failed: ${job.error || 'no reason was given.'}`;
        break;
      default:
        text = `Status: ${String(job.status)}`;
    }
    showStatus(String(job.status), again + text);
    const link = localPath(job.result_url);
    if (job.status === 'done' && link) {
      $('result-link').href = link;
      $('result').hidden = false;
    } else {
      $('result').hidden = true;
    }
  }

  // ------------------------------------------------------------------
  // The list of recent jobs.

  async function refreshList() {
    let res;
    try {
      res = await api('GET', '/jobs');
    } catch (_) {
      return;
    }
    if (res.status === 401) {
      showLogin('Your session ended: log in again.');
      return;
    }
    if (res.status !== 200 || !res.data || !Array.isArray(res.data.jobs)) return;
    const list = $('jobs-list');
    const items = res.data.jobs.map((job) => {
      const li = document.createElement('li');
      li.dataset.jobId = String(job.id);
      li.className = `state-${String(job.status)}`;
      const when = new Date(Number(job.created_at));
      const time = Number.isNaN(when.getTime()) ? '' : ` · started ${when.toLocaleString()}`;
      let line = `${job.kind} · ${job.status}`;
      if (job.status === 'running') line += ` · ${Number(job.progress) || 0} %`;
      li.append(document.createTextNode(line + time));
      const link = localPath(job.result_url);
      if (job.status === 'done' && link) {
        const a = document.createElement('a');
        a.href = link;
        a.textContent = 'the result';
        li.append(document.createTextNode(' · '), a);
      }
      if (job.status === 'failed' && job.error) {
        li.append(document.createTextNode(` · ${job.error}`));
      }
      return li;
    });
    list.replaceChildren(...items);
    $('jobs-empty').hidden = items.length > 0;
  }

  // ------------------------------------------------------------------

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', login);
    $('logout-button').addEventListener('click', logout);
    $('export-button').addEventListener('click', startExport);
    $('refresh-button').addEventListener('click', refreshList);
    checkSession();
  });
})();
