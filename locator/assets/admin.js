// Locus admin page: live region health over server-sent events, edge actions, "why"
// box and audit log. Plain JavaScript, no framework, no third-party code.
//
// Rendering is keyed (one card per region, one row per edge, created once and updated
// in place), so a keyboard user's focus survives the updates that arrive every second.
// Every text from the server goes through textContent: nothing is parsed as HTML.
'use strict';

(() => {
  const REGION_LABEL = { healthy: 'Healthy', degraded: 'Degraded', down: 'Down', fallback: 'Served by fallback' };
  const REGION_ICON = { healthy: '✓', degraded: '!', down: '✕', fallback: '↪' };
  const REGION_ORDER = ['healthy', 'degraded', 'down', 'fallback'];
  const EDGE_LABEL = { active: 'active', suspended: 'suspended', draining: 'draining', suspect: 'suspect', 'link-lost': 'link lost', failed: 'failed' };
  const EDGE_ORDER = ['active', 'suspended', 'draining', 'suspect', 'link-lost', 'failed'];
  const FAILED_SHORT = { 'health-probe-failed': 'process gone', 'grace-expired': 'grace period over', drained: 'drained' };
  // No event for this long (the server sends one at least every second): the stream is dead.
  const STALE_MS = 4500;
  const K = 1000 / 360;

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  };
  const svgEl = (tag, attrs) => {
    const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  };

  // ---------------------------------------------------------------- formatting

  const pct = (x) => `${Math.round(x * 100)}%`;
  const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;
  function fmtAge(ms) {
    if (ms < 1000) return `${(ms / 1000).toFixed(1)} s`;
    const s = Math.round(ms / 1000);
    if (s < 60) return `${s} s`;
    const m = Math.round(s / 60);
    if (m < 60) return `${m} min`;
    const h = Math.round(m / 60);
    return h < 48 ? `${h} h` : `${Math.round(h / 24)} d`;
  }
  function fmtSpan(secs) {
    if (secs < 90) return `${Math.max(1, Math.round(secs))} s`;
    if (secs < 5400) return `${Math.round(secs / 60)} min`;
    return `${Math.round(secs / 3600)} h`;
  }
  // Bits per second, decimal prefixes as on the edge's --max-bitrate.
  function fmtBitrate(bps) {
    if (!Number.isFinite(bps) || bps <= 0) return '0 bit/s';
    if (bps >= 1e9) return `${(bps / 1e9).toFixed(bps >= 1e10 ? 0 : 1)} Gbit/s`;
    if (bps >= 1e6) return `${(bps / 1e6).toFixed(bps >= 1e7 ? 0 : 1)} Mbit/s`;
    if (bps >= 1e3) return `${(bps / 1e3).toFixed(bps >= 1e4 ? 0 : 1)} kbit/s`;
    return `${Math.round(bps)} bit/s`;
  }
  // The WebRTC figures of a load report ('' for an edge with none).
  function fmtRtc(load) {
    const peers = load.rtc_peers || 0;
    const bin = load.bitrate_in || 0;
    const bout = load.bitrate_out || 0;
    if (!peers && !bin && !bout && !load.max_bitrate) return '';
    const cap = load.max_bitrate ? ` of ${fmtBitrate(load.max_bitrate)}` : '';
    return `${plural(peers, 'WebRTC peer', 'WebRTC peers')}, in ${fmtBitrate(bin)} (${load.packets_in_per_s || 0} pkt/s), out ${fmtBitrate(bout)} (${load.packets_out_per_s || 0} pkt/s)${cap}`;
  }
  function fmtLag(ms) {
    if (ms === null || ms === undefined || !Number.isFinite(ms)) return '—';
    return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
  }
  function fmtTime(ms) {
    const d = new Date(ms);
    const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
    if (d.toDateString() === new Date().toDateString()) return time;
    return `${d.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${time}`;
  }
  function hostOf(url) {
    const m = /^[a-z]+:([^?]+)/i.exec(url);
    return m ? m[1] : url;
  }

  // ---------------------------------------------------------------- state

  let status = null;
  let source = null;
  let connState = 'connecting';
  let lastMessageAt = 0;
  let lostAt = 0;
  let retryTimer = null;
  const cards = new Map();
  const markers = new Map();
  let attentionKey = '';

  const who = document.querySelector('meta[name="locus-admin-name"]');
  $('who').textContent = who ? who.content : '';

  // ---------------------------------------------------------------- live connection

  function setConnection(state) {
    if (state === connState) return;
    const was = connState;
    connState = state;
    $('conn').dataset.state = state;
    const lost = state === 'lost';
    $('lost').hidden = !lost;
    document.body.classList.toggle('is-stale', lost);
    if (lost) {
      lostAt = Date.now();
      $('lost-detail').textContent = status
        ? `The figures below are from ${fmtTime(status.generated_at_ms)} and may be out of date.`
        : 'No figures yet.';
      $('conn-text').textContent = 'Connection lost — retrying…';
    } else if (state === 'live') {
      $('conn-text').textContent = 'Live';
      if (was === 'lost') announce('Connection to the locator restored.');
    }
  }

  function connect() {
    clearTimeout(retryTimer);
    if (source) source.close();
    source = new EventSource('/v1/admin/events');
    source.addEventListener('status', (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      lastMessageAt = Date.now();
      setConnection('live');
      render(data);
    });
    source.onerror = () => {
      setConnection('lost');
      // A network error makes the browser retry by itself; an HTTP error (401 after a
      // locator restart or sign-out) closes the stream for good: find out why.
      if (source.readyState === EventSource.CLOSED) scheduleCheck();
    };
  }

  function scheduleCheck() {
    clearTimeout(retryTimer);
    retryTimer = setTimeout(checkAndReconnect, 2000);
  }

  async function checkAndReconnect() {
    retryTimer = null;
    try {
      const response = await fetch('/v1/admin/status', { cache: 'no-store' });
      if (response.status === 401 || response.status === 403) {
        location.assign('/admin');
        return;
      }
      connect();
    } catch {
      scheduleCheck();
    }
  }

  setInterval(() => {
    if (connState === 'live' && Date.now() - lastMessageAt > STALE_MS) {
      setConnection('lost');
      connect();
    } else if (connState === 'lost' && source && source.readyState === EventSource.CLOSED && !retryTimer) {
      scheduleCheck();
    }
  }, 1000);

  // ---------------------------------------------------------------- announcements

  function announce(text) {
    const node = $('announce');
    node.textContent = '';
    // A new text node each time, so screen readers read repeats too.
    setTimeout(() => { node.textContent = text; }, 50);
  }

  function announceChanges(before, after) {
    if (!before) return;
    const messages = [];
    const old = new Map(before.regions.map((r) => [r.id, r]));
    for (const r of after.regions) {
      const o = old.get(r.id);
      if (o && o.state !== r.state) messages.push(`Region ${r.id} is now ${REGION_LABEL[r.state].toLowerCase()}.`);
      const oldEdges = new Map((o ? o.edges : []).map((e) => [e.id, e]));
      for (const e of r.edges) {
        const oe = oldEdges.get(e.id);
        if (oe && oe.state !== e.state) messages.push(`Edge ${e.id} is now ${EDGE_LABEL[e.state]}.`);
        if (!oe && o) messages.push(`Edge ${e.id} joined ${r.id}.`);
      }
    }
    if (messages.length) announce(messages.join(' '));
  }

  let toastTimer = null;
  function toast(text, isError) {
    const node = $('toast');
    node.textContent = text;
    node.classList.toggle('is-error', !!isError);
    node.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { node.hidden = true; }, isError ? 9000 : 4500);
  }

  // ---------------------------------------------------------------- rendering

  function render(data) {
    const before = status;
    status = data;
    renderOverview(data);
    renderMap(data);
    renderCards(data, before);
    renderFooter(data);
    announceChanges(before, data);
    maybeRefreshAudit();
  }

  function renderOverview(data) {
    const chips = $('chips');
    chips.replaceChildren();
    for (const state of REGION_ORDER) {
      const n = data.summary.regions[state] || 0;
      const chip = el('li', `chip state-${state}${n === 0 ? ' is-zero' : ''}`);
      chip.append(el('span', 'icon', REGION_ICON[state]), el('span', 'n', String(n)), ` ${REGION_LABEL[state].toLowerCase()}`);
      chip.querySelector('.icon').setAttribute('aria-hidden', 'true');
      chips.append(chip);
    }
    const total = EDGE_ORDER.reduce((sum, s) => sum + (data.summary.edges[s] || 0), 0);
    const parts = EDGE_ORDER.filter((s) => data.summary.edges[s]).map((s) => `${data.summary.edges[s]} ${EDGE_LABEL[s]}`);
    $('edge-counts').textContent = total ? `${plural(total, 'edge', 'edges')}: ${parts.join(' · ')}` : 'No edges connected yet';

    const problems = data.regions.filter((r) => r.state !== 'healthy');
    const key = JSON.stringify(problems.map((r) => [r.id, r.state, r.summary, r.served_by && r.served_by.region]));
    if (key === attentionKey) return;
    attentionKey = key;
    const list = $('attention');
    list.replaceChildren();
    if (!problems.length) {
      list.append(el('li', 'all-good', data.regions.length ? '✓ Every region is healthy.' : 'No regions configured.'));
      return;
    }
    for (const r of problems) {
      const li = el('li', `state-${r.state}`);
      const a = el('a');
      a.href = `#region-${r.id}`;
      const icon = el('span', 'icon', REGION_ICON[r.state]);
      icon.setAttribute('aria-hidden', 'true');
      const label = r.name === r.id ? r.id : `${r.name} (${r.id})`;
      a.append(icon, ' ', el('span', 'attention-region', label), ` ${REGION_LABEL[r.state].toLowerCase()}: `);
      const why = r.served_by ? `new sessions go to ${r.served_by.region}; ${r.summary}` : r.summary;
      a.append(why);
      li.append(a);
      list.append(li);
    }
  }

  function project(lat, lon) {
    const clampedLat = Math.max(-58, Math.min(84, lat));
    return [(lon + 180) * K, (84 - clampedLat) * K];
  }

  function renderMap(data) {
    const group = document.querySelector('.map-markers');
    const flows = document.querySelector('.map-flows');
    if (!group || !flows) return;
    const points = new Map(data.regions.map((r) => [r.id, project(r.location.lat, r.location.lon)]));
    const seen = new Set();
    for (const r of data.regions) {
      seen.add(r.id);
      const [x, y] = points.get(r.id);
      let m = markers.get(r.id);
      if (!m) {
        const a = svgEl('a', { href: `#region-${r.id}` });
        const title = svgEl('title');
        const halo = svgEl('circle', { r: 13, class: 'halo' });
        const dot = svgEl('circle', { r: 7.5, class: 'dot' });
        const glyph = svgEl('text', { class: 'glyph' });
        const label = svgEl('text', { class: 'label' });
        const labelState = svgEl('text', { class: 'label-state' });
        a.append(title, halo, dot, glyph, label, labelState);
        group.append(a);
        m = { a, title, glyph, label, labelState };
        markers.set(r.id, m);
      }
      m.a.setAttribute('class', `marker state-${r.state}`);
      m.a.setAttribute('transform', `translate(${x.toFixed(1)} ${y.toFixed(1)})`);
      m.a.dataset.region = r.id;
      const words = `${r.name}: ${REGION_LABEL[r.state].toLowerCase()}`;
      m.a.setAttribute('aria-label', words);
      m.title.textContent = `${words}. ${r.summary}`;
      m.glyph.textContent = REGION_ICON[r.state];
      // Put the label on the side with room (another marker close on the right: left).
      const crowdedRight = x > 870 || [...points.entries()].some(([id, [ox, oy]]) => id !== r.id && ox > x && ox - x < 115 && Math.abs(oy - y) < 22);
      const dx = crowdedRight ? -13 : 13;
      const anchor = crowdedRight ? 'end' : 'start';
      for (const [node, dy] of [[m.label, r.state === 'healthy' ? 4.5 : -1], [m.labelState, 12]]) {
        node.setAttribute('x', dx);
        node.setAttribute('y', dy);
        node.setAttribute('text-anchor', anchor);
        node.classList.toggle('is-left', crowdedRight);
      }
      m.label.textContent = r.id;
      m.labelState.textContent = r.state === 'healthy' ? '' : REGION_LABEL[r.state].toLowerCase();
    }
    for (const [id, m] of markers) {
      if (!seen.has(id)) {
        m.a.remove();
        markers.delete(id);
      }
    }
    flows.replaceChildren();
    for (const r of data.regions) {
      if (!r.served_by || !points.has(r.served_by.region)) continue;
      const [x1, y1] = points.get(r.id);
      const [x2, y2] = points.get(r.served_by.region);
      if (Math.abs(x2 - x1) <= 500) {
        flows.append(flowPath(x1, y1, x2, y2, true, true));
      } else {
        // Shorter the other way round the globe: leave by one edge of the map, come back
        // by the other (the map clips what falls outside).
        const shift = x1 > x2 ? 1000 : -1000;
        flows.append(flowPath(x1, y1, x2 + shift, y2, true, false));
        flows.append(flowPath(x1 - shift, y1, x2, y2, false, true));
      }
    }
  }

  function flowPath(x1, y1, x2, y2, fromDot, toDot) {
    const mx = (x1 + x2) / 2;
    const my = (y1 + y2) / 2;
    const len = Math.hypot(x2 - x1, y2 - y1) || 1;
    // Bow the curve upwards (to the left of the direction of travel).
    const bow = Math.min(90, len * 0.25);
    let cx = mx + ((y1 - y2) / len) * bow;
    let cy = my + ((x2 - x1) / len) * bow;
    if (cy > my) { cx = mx - ((y1 - y2) / len) * bow; cy = my - ((x2 - x1) / len) * bow; }
    // Stop short of the dots.
    const tl = Math.hypot(x2 - cx, y2 - cy) || 1;
    const gapEnd = toDot ? 12 : 0;
    const ex = x2 - ((x2 - cx) / tl) * gapEnd;
    const ey = y2 - ((y2 - cy) / tl) * gapEnd;
    const sl = Math.hypot(cx - x1, cy - y1) || 1;
    const gapStart = fromDot ? 10 : 0;
    const sx = x1 + ((cx - x1) / sl) * gapStart;
    const sy = y1 + ((cy - y1) / sl) * gapStart;
    const attrs = {
      class: 'flow',
      d: `M${sx.toFixed(1)},${sy.toFixed(1)} Q${cx.toFixed(1)},${cy.toFixed(1)} ${ex.toFixed(1)},${ey.toFixed(1)}`,
    };
    if (toDot) attrs['marker-end'] = 'url(#flow-arrow)';
    return svgEl('path', attrs);
  }

  function newCard(region) {
    const node = $('tpl-card').content.firstElementChild.cloneNode(true);
    node.id = `region-${region.id}`;
    node.dataset.region = region.id;
    const q = (sel) => node.querySelector(sel);
    return {
      node,
      name: q('.region-name'),
      id: q('.region-id'),
      badge: q('.badge'),
      badgeIcon: q('.badge-icon'),
      badgeText: q('.badge-text'),
      summary: q('.card-summary'),
      served: q('.served'),
      sessions: q('.f-sessions'),
      traffic: q('.f-traffic'),
      fallback: q('.f-fallback'),
      turn: q('.f-turn'),
      turnServers: q('.turn-servers'),
      turnBody: q('.servers tbody'),
      tbody: q('.edges tbody'),
      table: q('.edges'),
      noEdges: q('.no-edges'),
      rows: new Map(),
    };
  }

  const SERVER_LABEL = { up: '✓ up', down: '✕ down', unchecked: '… not checked yet' };

  // One row per TURN/STUN server: rebuilt each update (a handful of rows, no controls).
  function renderServers(c, servers) {
    c.turnServers.hidden = servers.length === 0;
    const rows = servers.map((s) => {
      const tr = el('tr', `server state-${s.state}`);
      tr.append(el('td', 'server-url', s.url));
      tr.append(el('td', null, s.not_checked ? `not checked: ${s.not_checked}` : SERVER_LABEL[s.state] || s.state));
      tr.append(el('td', 'num', s.rtt_ms === null || s.rtt_ms === undefined ? '—' : fmtLag(s.rtt_ms)));
      tr.append(el('td', 'num', s.last_check_ms ? `${fmtAge(Date.now() - s.last_check_ms)} ago` : '—'));
      const error = s.last_error ? `${s.last_error.kind}: ${s.last_error.message}` : '';
      const td = el('td', s.state === 'down' ? 'warn-text' : 'muted', error || '—');
      if (s.last_error && s.state !== 'down') td.title = 'an earlier failure; the server answers again';
      tr.append(td);
      return tr;
    });
    c.turnBody.replaceChildren(...rows);
  }

  function renderCards(data, before) {
    const container = $('cards');
    const seen = new Set();
    const oldEdges = new Map();
    if (before) for (const r of before.regions) for (const e of r.edges) oldEdges.set(e.id, e);
    data.regions.forEach((r, i) => {
      seen.add(r.id);
      let c = cards.get(r.id);
      if (!c) {
        c = newCard(r);
        cards.set(r.id, c);
      }
      if (container.children[i] !== c.node) container.insertBefore(c.node, container.children[i] || null);
      updateCard(c, r, data, oldEdges);
    });
    for (const [id, c] of cards) {
      if (!seen.has(id)) {
        c.node.remove();
        cards.delete(id);
      }
    }
  }

  function updateCard(c, r, data, oldEdges) {
    c.node.className = `card state-${r.state}`;
    c.node.dataset.state = r.state;
    c.node.dataset.ownState = r.own_state;
    c.name.textContent = r.name;
    c.id.textContent = r.name === r.id ? '' : r.id;
    c.badge.className = `badge state-${r.state}`;
    c.badgeIcon.textContent = REGION_ICON[r.state];
    c.badgeText.textContent = REGION_LABEL[r.state];
    c.summary.textContent = r.state === 'fallback' && r.own_state !== 'fallback'
      ? `Its own edges: ${REGION_LABEL[r.own_state].toLowerCase()} — ${r.summary}`
      : r.summary;

    if (r.served_by) {
      c.served.replaceChildren('New sessions go to ', el('strong', null, r.served_by.region), ` (edge ${r.served_by.edge}): ${r.served_by.reason}`);
      c.served.hidden = false;
    } else {
      c.served.hidden = true;
    }

    c.sessions.textContent = r.capacity
      ? `${r.sessions} of ${r.capacity} (${pct(r.sessions / r.capacity)})`
      : r.sessions ? String(r.sessions) : '—';

    const t = r.traffic;
    const span = fmtSpan(data.traffic_window_secs);
    let traffic;
    if (!t.answers) {
      traffic = `none in the last ${span}`;
    } else if (!t.elsewhere) {
      traffic = `${t.answers} in the last ${span}, all served here`;
    } else {
      const to = t.to.slice(0, 3).map((f) => `${f.region} ${f.answers}`).join(', ');
      traffic = `${t.answers} in the last ${span}: ${pct(t.share_elsewhere)} went elsewhere (${to})`;
    }
    if (t.absorbed) traffic += ` · served ${t.absorbed} for other regions`;
    c.traffic.textContent = traffic;
    c.traffic.classList.toggle('warn-text', !!t.elsewhere);

    c.fallback.textContent = r.fallback_order.length ? `${r.fallback_order.join(' → ')}, then nearest` : 'nearest regions by distance';

    const pool = r.turn;
    c.turn.classList.remove('warn-text');
    if (!pool) {
      c.turn.textContent = '—';
      c.turnServers.hidden = true;
    } else {
      const stun = pool.stun.length ? ` · ${plural(pool.stun.length, 'STUN server', 'STUN servers')}` : '';
      const turnRows = pool.servers.filter((s) => /^turns?:/.test(s.url));
      const upCount = turnRows.filter((s) => s.state !== 'down').length;
      const rotation = pool.secrets > 1 ? ` · ${pool.secrets} secrets (rotation)` : '';
      if (!pool.fallback) {
        c.turn.textContent = `${upCount} of ${plural(pool.turn.length, 'relay', 'relays')} up${stun}${rotation}`;
      } else if (pool.fallback.region) {
        c.turn.textContent = `Borrowing relays of ${pool.fallback.region}: ${pool.problem}${stun}`;
        c.turn.classList.add('warn-text');
      } else {
        c.turn.textContent = `${pool.problem}${stun}`;
        c.turn.classList.add('warn-text');
      }
      c.turn.title = pool.fallback ? pool.fallback.reason : [...pool.turn, ...pool.stun].join('\n');
      renderServers(c, pool.servers);
    }

    c.table.hidden = r.edges.length === 0;
    c.noEdges.hidden = r.edges.length !== 0;
    const seen = new Set();
    r.edges.forEach((e, i) => {
      seen.add(e.id);
      let row = c.rows.get(e.id);
      if (!row) {
        row = newRow(e);
        c.rows.set(e.id, row);
      }
      if (c.tbody.children[i] !== row.node) c.tbody.insertBefore(row.node, c.tbody.children[i] || null);
      updateRow(row, e, data, oldEdges.get(e.id));
    });
    for (const [id, row] of c.rows) {
      if (!seen.has(id)) {
        row.node.remove();
        c.rows.delete(id);
      }
    }
  }

  function newRow(edge) {
    const node = $('tpl-edge').content.firstElementChild.cloneNode(true);
    node.dataset.edge = edge.id;
    const q = (sel) => node.querySelector(sel);
    node.addEventListener('animationend', () => node.classList.remove('just-changed'));
    return {
      node,
      name: q('.e-name'),
      sub: q('.e-sub'),
      pill: q('.pill'),
      stateText: q('.state-text'),
      why: q('.e-why'),
      load: q('.e-load'),
      barFill: q('.bar-fill'),
      barText: q('.bar-text'),
      sessions: q('.e-sessions'),
      conns: q('.e-conns'),
      lag: q('.e-lag'),
      age: q('.e-age'),
      toggle: q('button[data-action="suspend"]'),
      drain: q('button[data-action="drain"]'),
    };
  }

  function updateRow(row, e, data, old) {
    row.node.dataset.state = e.state;
    row.node.classList.toggle('is-retired', e.retired);
    if (old && old.state !== e.state) {
      row.node.classList.remove('just-changed');
      void row.node.offsetWidth;
      row.node.classList.add('just-changed');
    }
    row.name.textContent = e.id;
    row.sub.textContent = `${e.version} · ${e.url.replace(/^https?:\/\//, '')}`;
    row.sub.title = `version ${e.version}, ${e.url}`;
    row.pill.className = `pill edge-${e.state}`;
    row.stateText.textContent = EDGE_LABEL[e.state] + (e.retired ? ' (retired)' : '');
    let why = '';
    row.why.title = e.failed_because || '';
    if (e.failed_reason) why = FAILED_SHORT[e.failed_reason] || e.failed_reason;
    else if (e.state === 'active' && !e.takes_new_sessions) why = e.bottleneck === 'bitrate' ? 'saturated: bitrate at its cap' : 'saturated: no headroom';
    else if (e.state === 'draining' && e.suspended) why = 'also suspended';
    row.why.textContent = why;

    const load = e.load;
    const u = e.utilisation;
    row.load.className = `e-load ${!load ? 'load-none' : u >= 1 ? 'load-full' : u >= 0.7 ? 'load-warn' : 'load-ok'}`;
    row.barFill.style.setProperty('--w', `${Math.min(100, Math.max(0, u * 100)).toFixed(1)}%`);
    row.barText.textContent = load ? pct(u) : 'no report';
    row.load.title = load
      ? `Bottleneck (${e.bottleneck}) of: sessions ${load.sessions + e.pending_assignments}/${e.capacity}, CPU ${pct(load.cpu || 0)}, lag ${fmtLag(load.lag_ms)}, ${load.connections} connections` +
        (load.max_bitrate ? `, bitrate ${fmtBitrate(Math.max(load.bitrate_in || 0, load.bitrate_out || 0))}/${fmtBitrate(load.max_bitrate)}` : '')
      : 'No load report yet';
    row.sessions.textContent = `${(load ? load.sessions : 0) + e.pending_assignments} / ${e.capacity}`;
    const rtc = load ? fmtRtc(load) : '';
    row.conns.textContent = load
      ? `${load.connections} conn${load.connections === 1 ? '' : 's'}` +
        (rtc ? ` · ${load.rtc_peers || 0} rtc · ${fmtBitrate(Math.max(load.bitrate_in || 0, load.bitrate_out || 0))}` : '')
      : '';
    row.conns.title = load ? plural(load.connections, 'client connection', 'client connections') + (rtc ? `; ${rtc}` : '') : '';
    row.lag.textContent = load ? fmtLag(load.lag_ms) : '—';
    row.age.textContent = fmtAge(e.report_age_ms);
    const late = e.state !== 'failed' && e.report_age_ms > data.edge_timing.report_interval_ms * 1.5 + 500;
    row.age.classList.toggle('is-late', late);
    row.age.title = late ? 'Later than the report interval' : '';

    const suspended = e.suspended;
    const action = suspended ? 'resume' : 'suspend';
    if (row.toggle.dataset.action !== action || !row.toggle.textContent) {
      row.toggle.dataset.action = action;
      row.toggle.textContent = suspended ? 'Resume' : 'Suspend';
    }
    row.toggle.setAttribute('aria-label', `${suspended ? 'Resume' : 'Suspend'} edge ${e.id}`);
    row.toggle.hidden = e.retired;
    row.drain.setAttribute('aria-label', `Drain edge ${e.id}`);
    row.drain.hidden = e.retired || e.draining || e.state === 'failed' || e.state === 'link-lost';
  }

  function renderFooter(data) {
    const g = data.geoip;
    if (g) {
      const built = g.build_epoch ? new Date(g.build_epoch * 1000).toISOString().slice(0, 10) : 'unknown date';
      $('footer-geoip').textContent = `GeoIP: ${g.database_type} (${g.schema}, built ${built})`;
    } else {
      $('footer-geoip').textContent = `GeoIP off: every client goes to ${data.default_region}`;
    }
    const attribution = g && g.attribution;
    $('footer-attribution').hidden = !attribution;
    if (attribution) {
      const a = $('attribution-link');
      a.textContent = attribution.text;
      a.href = attribution.url;
    }
    $('footer-locator').textContent = `locator ${data.locator.version} · up ${fmtSpan(data.locator.uptime_secs)} · ${data.locator.database}`;
  }

  // ---------------------------------------------------------------- edge actions

  const ACTIONS = {
    suspend: (id) => ({
      title: `Suspend ${id}?`,
      text: 'It gets no new sessions unless no other edge is available anywhere. Its running sessions go on, and joins to them still go there. The suspension survives a locator restart.',
      ok: 'Suspend',
      done: 'suspended',
    }),
    resume: (id) => ({
      title: `Resume ${id}?`,
      text: 'It takes new sessions again.',
      ok: 'Resume',
      done: 'resumed',
    }),
    drain: (id) => ({
      title: `Drain ${id}?`,
      text: 'It takes no new sessions; running sessions end naturally. After the drain deadline its rooms move to other edges and their clients are told where. Only restarting the edge undoes this.',
      ok: 'Drain',
      danger: true,
      done: 'draining',
    }),
  };

  function confirmDialog({ title, text, ok, danger }) {
    const dialog = $('confirm');
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = text;
    const button = $('confirm-ok');
    button.textContent = ok;
    button.className = `btn ${danger ? 'btn-danger' : 'btn-primary'}`;
    dialog.returnValue = '';
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'confirm'), { once: true });
      dialog.showModal();
    });
  }

  async function act(edgeId, action, button) {
    const texts = ACTIONS[action](edgeId);
    if (!(await confirmDialog(texts))) return;
    button.disabled = true;
    try {
      const response = await fetch(`/v1/admin/edges/${encodeURIComponent(edgeId)}/${action}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-Locus-Admin': '1' },
        body: '{}',
      });
      const body = await response.json().catch(() => ({}));
      if (response.status === 401) {
        location.assign('/admin');
        return;
      }
      if (!response.ok) {
        toast(body.detail || `${texts.ok} failed (HTTP ${response.status})`, true);
        return;
      }
      toast(body.changed ? `${edgeId} ${texts.done}.` : `${edgeId} was already ${texts.done}: nothing changed.`);
      loadAudit(false);
    } catch {
      toast('The locator did not answer; nothing was changed. Try again.', true);
    } finally {
      button.disabled = false;
    }
  }

  $('cards').addEventListener('click', (event) => {
    const button = event.target.closest('button[data-action]');
    if (!button) return;
    const row = button.closest('tr[data-edge]');
    if (row) act(row.dataset.edge, button.dataset.action, button);
  });

  // ---------------------------------------------------------------- why box

  function cell(row, text) {
    const td = el('td', null, text);
    row.append(td);
    return td;
  }

  $('why-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const ip = $('why-ip').value.trim();
    const out = $('why-result');
    if (!ip) return;
    out.replaceChildren(el('p', 'muted', 'Asking the locator…'));
    let response;
    let body;
    try {
      response = await fetch(`/v1/admin/explain?ip=${encodeURIComponent(ip)}`, { cache: 'no-store' });
      body = await response.json();
    } catch {
      out.replaceChildren(el('p', 'why-error', 'The locator did not answer.'));
      return;
    }
    if (response.status === 401) {
      location.assign('/admin');
      return;
    }
    if (!response.ok) {
      out.replaceChildren(el('p', 'why-error', body.detail || `HTTP ${response.status}`));
      return;
    }
    renderExplain(out, body);
  });

  function renderExplain(out, x) {
    const g = x.geoip;
    const nodes = [];
    const answer = x.answer;
    nodes.push(el('p', 'why-answer', answer
      ? `${g.ip} → ${answer.edge} in ${answer.region}${answer.fallback ? ' (fallback)' : ''}`
      : `${g.ip} → no edge can take it right now`));
    const steps = el('ol', 'why-steps');
    const place = [g.country_name ? `${g.country_name} (${g.country})` : g.country, g.continent && `continent ${g.continent}`]
      .filter(Boolean).join(', ');
    steps.append(el('li', null, `GeoIP: ${place || 'not in the database'}${g.network ? `, network ${g.network}` : ''}`));
    steps.append(el('li', null, `Rule “${g.rule}” places it in ${g.region}${g.detail ? ` (${g.detail})` : ''}`));
    if (x.preferred_region !== g.region) steps.append(el('li', null, `Asked for region ${x.preferred_region}`));
    steps.append(el('li', null, answer ? `Selection: ${answer.reason_code}` : 'Selection: no edge available in any region'));
    nodes.push(steps);
    if (answer) nodes.push(el('p', 'why-reason', answer.reason));
    if (x.candidates.length) {
      const table = el('table', 'why-candidates');
      const head = el('tr');
      for (const h of ['Edge', 'Region', 'State', 'Load', 'New sessions']) {
        const th = el('th', null, h);
        th.scope = 'col';
        head.append(th);
      }
      table.append(el('thead'));
      table.tHead.append(head);
      const body = el('tbody');
      for (const cnd of x.candidates.slice(0, 8)) {
        const tr = el('tr');
        cell(tr, cnd.edge);
        cell(tr, cnd.region);
        cell(tr, EDGE_LABEL[cnd.state] || cnd.state);
        const rtc = cnd.load ? fmtRtc(cnd.load) : '';
        cell(tr, pct(cnd.score) + (rtc ? ` · ${fmtBitrate(Math.max(cnd.load.bitrate_in || 0, cnd.load.bitrate_out || 0))}` : '')).title = rtc;
        const why = cnd.why_not || 'no';
        cell(tr, cnd.eligible ? 'yes' : why.split(':')[0] + (why.includes('--max-bitrate') ? ' (bitrate)' : '')).title = cnd.why_not || '';
        body.append(tr);
      }
      table.append(body);
      nodes.push(table);
    }
    const attribution = status && status.geoip && status.geoip.attribution;
    if (attribution) {
      const p = el('p', 'why-attribution');
      const a = el('a', null, attribution.text);
      a.href = attribution.url;
      a.rel = 'noopener noreferrer';
      p.append(a);
      nodes.push(p);
    }
    out.replaceChildren(...nodes);
  }

  // ---------------------------------------------------------------- audit log

  let auditFilter = { edge: '', session: '' };
  let auditBefore = null;
  let auditPaged = false;
  let auditAt = 0;
  let auditBusy = false;

  async function loadAudit(append) {
    if (auditBusy) return;
    auditBusy = true;
    auditAt = Date.now();
    const params = new URLSearchParams({ limit: '25' });
    if (auditFilter.edge) params.set('edge', auditFilter.edge);
    if (auditFilter.session) params.set('session', auditFilter.session);
    if (append && auditBefore !== null) params.set('before', String(auditBefore));
    try {
      const response = await fetch(`/v1/admin/audit?${params}`, { cache: 'no-store' });
      if (!response.ok) return;
      const page = await response.json();
      const tbody = $('audit-rows');
      if (!append) tbody.replaceChildren();
      for (const entry of page.entries) {
        const tr = el('tr');
        cell(tr, fmtTime(entry.at_ms));
        const kind = el('td');
        kind.append(el('span', 'audit-kind', entry.kind));
        tr.append(kind);
        cell(tr, entry.edge_id || '');
        const session = el('td', null, entry.session_id ? entry.session_id.slice(0, 10) + (entry.session_id.length > 10 ? '…' : '') : '');
        if (entry.session_id) session.title = entry.session_id;
        tr.append(session);
        cell(tr, entry.actor || entry.source);
        cell(tr, [entry.participant && `participant ${entry.participant}`, entry.detail].filter(Boolean).join(' · '));
        tbody.append(tr);
      }
      auditBefore = page.next_before;
      auditPaged = append;
      $('audit-more').hidden = page.next_before === null || page.next_before === undefined;
      $('audit-empty').hidden = tbody.children.length > 0;
    } catch {
      // The live status shows the connection problem; the log waits for the next try.
    } finally {
      auditBusy = false;
    }
  }

  function maybeRefreshAudit() {
    if (!auditPaged && Date.now() - auditAt > 5000) loadAudit(false);
  }

  $('audit-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    auditFilter = { edge: String(form.get('edge') || '').trim(), session: String(form.get('session') || '').trim() };
    auditBefore = null;
    loadAudit(false);
  });
  $('audit-more').addEventListener('click', () => loadAudit(true));

  // ---------------------------------------------------------------- sign out

  $('logout').addEventListener('click', async () => {
    try {
      await fetch('/admin/logout', { method: 'POST', headers: { 'X-Locus-Admin': '1' } });
    } finally {
      location.assign('/admin');
    }
  });

  connect();
})();
