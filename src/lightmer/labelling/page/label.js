// The labelling page of `lightmer label`. Every answer is sent to the server the moment it is
// given and is written to the answers file before the reply comes; the page keeps nothing of
// its own, so a reload, a second tab or a restarted server continue from the file.
'use strict';

const $ = (id) => document.getElementById(id);
let state = null;        // /api/state: labels, extra, items, answers {window_id: label}
let index = 0;           // the window shown; items.length = the "all answered" screen
let busy = false;        // one answer in flight at a time: answers reach the file in order
const tabAnswers = [];   // times of the answers given in this tab (the labelling rate)
let shownAt = null;      // when this tab first showed a window

function choices() {
  return [...state.labels, ...state.extra];
}

function keyOf(label) {
  const i = state.labels.indexOf(label);
  return i >= 0 ? String(i + 1) : label[0];
}

function firstUnanswered(from) {
  const n = state.items.length;
  for (let k = 0; k < n; k++) {
    const i = (from + k) % n;
    if (!(state.items[i].window_id in state.answers)) return i;
  }
  return n;
}

function showError(message) {
  $('error').textContent = message;
  $('error').hidden = false;
}

function updateCounts() {
  const done = Object.keys(state.answers).length;
  $('counter').textContent = `${done} / ${state.items.length}`;
  if (tabAnswers.length >= 1 && shownAt !== null) {
    const minutes = (tabAnswers[tabAnswers.length - 1] - shownAt) / 60000;
    $('rate').textContent = minutes > 0 ? (tabAnswers.length / minutes).toFixed(1) : '–';
  }
}

function render() {
  updateCounts();
  document.body.dataset.index = String(index);
  const finished = index >= state.items.length;
  $('main').hidden = finished;
  $('done').hidden = !finished;
  if (finished) {
    $('answers-file').textContent = state.answers_file;
    $('audio').pause();
    return;
  }
  if (shownAt === null) shownAt = Date.now();
  const item = state.items[index];
  $('position').textContent = `${index + 1} of ${state.items.length}`;
  $('window-id').textContent = item.window_id;
  $('faces').src = `/media/${index}/faces.png`;
  $('clip').hidden = false;
  $('clip-caption').textContent = 'camera';
  $('clip').src = `/media/${index}/clip.gif`;
  const audio = $('audio');
  audio.src = `/media/${index}/audio.wav`;
  audio.play().catch(() => {});     // the browser may wait for a first key press
  $('entropy').textContent = item.entropy_bits.toFixed(2);
  showContinuity(item);

  const bars = $('bars');
  bars.replaceChildren();
  state.labels.forEach((name, c) => {
    const row = document.createElement('div');
    row.className = 'bar' + (name === item.predicted ? ' predicted' : '');
    const p = item.probs[c];
    row.innerHTML = '<span class="name"></span><span class="track"><span class="fill">' +
      '</span></span><span class="p"></span>';
    row.querySelector('.name').textContent = name;
    row.querySelector('.fill').style.width = `${(100 * p).toFixed(1)}%`;
    row.querySelector('.fill').style.display = 'block';
    row.querySelector('.p').textContent = p.toFixed(2) + (name === item.predicted ? ' ◀ predicted' : '');
    bars.appendChild(row);
  });

  const given = state.answers[item.window_id];
  const buttons = $('buttons');
  buttons.replaceChildren();
  for (const label of choices()) {
    const b = document.createElement('button');
    b.dataset.label = label;
    b.innerHTML = '<kbd></kbd><span></span>';
    b.querySelector('kbd').textContent = keyOf(label);
    b.querySelector('span').textContent = label;
    if (label === given) b.className = 'chosen';
    b.addEventListener('click', () => answer(label));
    buttons.appendChild(b);
  }
  $('current').textContent = given ? `answered: ${given}` : '';
  prefetch(index + 1);
}

// A window that spans a pause (silence between two sounds inside it) or lacks a segment may
// hold two utterances or two people: say so, so that the answer is about one of them or skip.
function showContinuity(item) {
  const notes = item.pauses.map(([a, b]) =>
    `spans a pause: ${(b - a).toFixed(1)} s of silence at ${a.toFixed(1)} s of ` +
    `${item.span_s.toFixed(1)} s (two utterances?)`);
  if (item.segments_present < item.n_segments) {
    notes.push(`${item.n_segments - item.segments_present} of ${item.n_segments} segments ` +
               'missing (no face or no sound there)');
  }
  const box = $('continuity');
  box.textContent = notes.length ? notes.join('; ') : 'one continuous run: no pause inside';
  box.className = notes.length ? 'warn' : 'ok';
  box.dataset.pauses = String(item.pauses.length);
}

// The next window's files are asked for while this one is answered, so they are ready.
const prefetched = new Set();
function prefetch(i) {
  if (i >= state.items.length || prefetched.has(i)) return;
  prefetched.add(i);
  for (const name of ['faces.png', 'clip.gif', 'audio.wav']) {
    fetch(`/media/${i}/${name}`).catch(() => {});
  }
}

async function answer(label) {
  if (busy || index >= state.items.length) return;
  busy = true;
  const item = state.items[index];
  try {
    const reply = await fetch('/api/answer', {
      method: 'POST', headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({window_id: item.window_id, label: label, who: state.who}),
    });
    const body = await reply.json();
    if (!reply.ok) throw new Error(body.error || reply.statusText);
    $('error').hidden = true;
    state.answers[item.window_id] = label;
    tabAnswers.push(Date.now());
    $('saved').textContent = `saved: ${label}`;
    index = firstUnanswered(index + 1);
    render();
  } catch (e) {
    showError(`not saved (${e.message}); the server may be down: press the key again`);
  } finally {
    busy = false;
  }
}

function move(step) {
  index = Math.max(0, Math.min(state.items.length - 1, index + step));
  render();
}

document.addEventListener('keydown', (event) => {
  if (state === null || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  if (/^[1-9]$/.test(key) && Number(key) <= state.labels.length) {
    answer(state.labels[Number(key) - 1]);
  } else if (key === 's' || key === 'u') {
    answer(state.extra.find((x) => x[0] === key));
  } else if (key === 'ArrowLeft') {
    move(-1);
  } else if (key === 'ArrowRight') {
    move(1);
  } else if (key === 'a' || key === ' ') {
    const audio = $('audio');
    audio.currentTime = 0;
    audio.play().catch(() => {});
  } else {
    return;
  }
  event.preventDefault();
});

async function load() {
  try {
    const reply = await fetch('/api/state');
    const body = await reply.json();
    if (!reply.ok) throw new Error(body.error || reply.statusText);
    state = body;
    index = firstUnanswered(0);
    $('clip').addEventListener('error', () => {
      $('clip').hidden = true;
      $('clip-caption').textContent = 'no camera frames: the bag is not where it was pooled';
    });
    render();
    document.body.dataset.ready = '1';
  } catch (e) {
    showError(`cannot load the batch (${e.message}); is \`lightmer label\` running?`);
  }
}

load();
