/**
 * The coreason side panel: renders the kernel runtime's state (ledgers, tasks, caches, decode
 * events) from throttled event batches, and sends intents (pause, resume, abort) back.
 * It holds state only; every decision stays in the kernel's runtime.
 */
import { Widget } from '@lumino/widgets';

export interface IEvent {
  type: string;
  ts: number;
  seq: number;
  workflow_id?: string | null;
  source?: string | null;
  data: { [key: string]: any };
}

export interface ILedger {
  workflow_id: string;
  ceiling: number | null;
  spent: number;
  reserved: number;
  tokens_in: number;
  tokens_out: number;
  by_tier: { [tier: string]: number };
}

export type Intent = 'pause' | 'resume' | 'abort' | 'preempt';

const MAX_LOG = 60;
/** The area of the events announcing a workflow's control state (`workflow.paused`, …). */
const CONTROL_AREA = 'workflow.';
/** Control states that override what the workflow is doing (its activity). */
const HALTED = new Set(['paused', 'preempted', 'aborted']);

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  cls?: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (cls) {
    node.className = cls;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

export class CoreasonPanel extends Widget {
  private _status: HTMLElement;
  private _ledgers: HTMLElement;
  private _tasks: HTMLElement;
  private _caches: HTMLElement;
  private _log: HTMLElement;
  private _ledgerState = new Map<string, ILedger>();
  /** Control state per workflow (running, paused, preempted, aborted), from the kernel. */
  private _workflowState = new Map<string, string>();
  /** What the workflow is doing (idle, running, refused, waiting for a human), from events. */
  private _activity = new Map<string, string>();
  private _taskState = new Map<string, string>();
  private _criticalPath = new Set<string>();
  private _cache = { hits: 0, misses: 0 };
  private _events: IEvent[] = [];
  private _send: ((intent: Intent, workflowId: string) => void) | null = null;
  private _eventCount = 0;

  constructor() {
    super();
    this.id = 'coreason-panel';
    this.title.caption = 'coreason runtime';
    this.title.label = 'coreason';
    this.addClass('jp-CoreasonPanel');
    this._status = el('div', 'jp-CoreasonPanel-status', 'no notebook kernel');
    const section = (title: string, cls: string): HTMLElement => {
      const box = el('section', `jp-CoreasonPanel-section ${cls}`);
      box.appendChild(el('h3', undefined, title));
      const body = el('div', 'jp-CoreasonPanel-body');
      box.appendChild(body);
      this.node.appendChild(box);
      return body;
    };
    this.node.appendChild(this._status);
    this._ledgers = section('Budgets (C against Ω)', 'jp-CoreasonPanel-budgets');
    this._tasks = section('Tasks', 'jp-CoreasonPanel-tasks');
    this._caches = section('Caches', 'jp-CoreasonPanel-caches');
    this._log = section('Events', 'jp-CoreasonPanel-log');
    this.render();
  }

  /** Where intents go; null while no runtime is connected. */
  set sender(send: ((intent: Intent, workflowId: string) => void) | null) {
    this._send = send;
    this.render();
  }

  get eventCount(): number {
    return this._eventCount;
  }

  setStatus(text: string, connected: boolean): void {
    this._status.textContent = text;
    this._status.dataset.connected = connected ? 'true' : 'false';
  }

  reset(): void {
    this._ledgerState.clear();
    this._workflowState.clear();
    this._activity.clear();
    this._taskState.clear();
    this._criticalPath.clear();
    this._cache = { hits: 0, misses: 0 };
    this._events = [];
    this.render();
  }

  applySnapshot(ledgers: ILedger[], workflows: { workflow_id: string; state: string }[]): void {
    for (const ledger of ledgers) {
      this._ledgerState.set(ledger.workflow_id, ledger);
    }
    for (const wf of workflows) {
      this._workflowState.set(wf.workflow_id, wf.state);
    }
    this.render();
  }

  applyAck(workflowId: string, state: string): void {
    this._workflowState.set(workflowId, state);
    this.render();
  }

  applyEvents(events: IEvent[]): void {
    for (const ev of events) {
      this._eventCount += 1;
      this._apply(ev);
      this._events.push(ev);
    }
    if (this._events.length > MAX_LOG) {
      this._events.splice(0, this._events.length - MAX_LOG);
    }
    this.render();
  }

  /** The state shown for a workflow: a halt overrides its activity. */
  stateOf(workflowId: string): string {
    const control = this._workflowState.get(workflowId) || 'running';
    if (HALTED.has(control)) {
      return control;
    }
    return this._activity.get(workflowId) || 'idle';
  }

  private _apply(ev: IEvent): void {
    const wf = ev.workflow_id || undefined;
    const d = ev.data || {};
    if (ev.type.startsWith(CONTROL_AREA) && wf && typeof d.state === 'string') {
      // pause / resume / preempt / abort from any origin: a magic, the dashboard, this panel
      this._workflowState.set(wf, d.state);
      return;
    }
    if (ev.type === 'budget.charged' && wf) {
      const old = this._ledgerState.get(wf);
      const byTier = { ...(old ? old.by_tier : {}) };
      byTier[d.tier] = (byTier[d.tier] || 0) + (d.cost || 0);
      this._ledgerState.set(wf, {
        workflow_id: wf,
        ceiling: d.ceiling ?? (old ? old.ceiling : null),
        spent: d.spent ?? (old ? old.spent : 0),
        reserved: old ? Math.max(old.reserved - (d.released || 0), 0) : 0,
        tokens_in: (old ? old.tokens_in : 0) + (d.tokens_in || 0),
        tokens_out: (old ? old.tokens_out : 0) + (d.tokens_out || 0),
        by_tier: byTier
      });
    } else if (ev.type === 'budget.set' && wf) {
      const old = this._ledgerState.get(wf);
      this._ledgerState.set(wf, {
        workflow_id: wf,
        ceiling: d.ceiling ?? null,
        spent: d.spent ?? (old ? old.spent : 0),
        reserved: old ? old.reserved : 0,
        tokens_in: old ? old.tokens_in : 0,
        tokens_out: old ? old.tokens_out : 0,
        by_tier: old ? old.by_tier : {}
      });
    } else if (ev.type === 'budget.exceeded' && wf) {
      this._activity.set(wf, 'refused (over Ω)');
    } else if (ev.type.startsWith('task.')) {
      const task = String(d.task);
      this._taskState.set(task, ev.type.slice(5));
    } else if (ev.type === 'sched.critical_path' && Array.isArray(d.path)) {
      this._criticalPath = new Set(d.path.map(String));
    } else if (ev.type === 'cache.hit') {
      this._cache.hits += 1;
    } else if (ev.type === 'cache.miss') {
      this._cache.misses += 1;
    } else if (ev.type === 'request.started' && wf) {
      this._activity.set(wf, 'running');
    } else if (ev.type === 'request.finished' && wf) {
      this._activity.set(wf, 'idle');
    } else if (ev.type === 'request.yielded' && wf) {
      this._activity.set(wf, 'waiting for a human');
    }
  }

  render(): void {
    this._renderLedgers();
    this._renderTasks();
    const total = this._cache.hits + this._cache.misses;
    this._caches.textContent =
      total === 0
        ? 'no lookups yet'
        : `${this._cache.hits} hits · ${this._cache.misses} misses · ` +
          `${((100 * this._cache.hits) / total).toFixed(0)}% hit ratio`;
    this._log.replaceChildren(
      ...this._events
        .slice()
        .reverse()
        .map(ev => {
          const row = el('div', 'jp-CoreasonPanel-event');
          row.dataset.type = ev.type;
          row.textContent = `${ev.type}${ev.workflow_id ? ' · ' + ev.workflow_id : ''}`;
          return row;
        })
    );
  }

  private _renderLedgers(): void {
    const rows: HTMLElement[] = [];
    const names = Array.from(this._ledgerState.keys()).sort();
    for (const name of names) {
      const led = this._ledgerState.get(name)!;
      const row = el('div', 'jp-CoreasonPanel-ledger');
      row.dataset.workflow = name;
      const state = this.stateOf(name);
      const control = this._workflowState.get(name) || 'running';
      row.dataset.state = state;
      const ceiling = led.ceiling === null ? '∞' : led.ceiling.toLocaleString();
      const title = el('div', 'jp-CoreasonPanel-ledgerTitle');
      title.appendChild(el('span', 'jp-CoreasonPanel-workflow', name));
      title.appendChild(el('span', 'jp-CoreasonPanel-state', state));
      row.appendChild(title);
      const bar = el('div', 'jp-CoreasonPanel-bar');
      const fill = el('div', 'jp-CoreasonPanel-barFill');
      const frac = led.ceiling ? Math.min(led.spent / led.ceiling, 1) : 0;
      fill.style.width = `${(100 * frac).toFixed(1)}%`;
      if (frac >= 1) {
        fill.classList.add('jp-mod-full');
      }
      bar.appendChild(fill);
      row.appendChild(bar);
      const tiers = Object.entries(led.by_tier)
        .map(([k, v]) => `${k} ${Math.round(v)}`)
        .join(' · ');
      row.appendChild(
        el(
          'div',
          'jp-CoreasonPanel-ledgerText',
          `C ${Math.round(led.spent).toLocaleString()} / Ω ${ceiling} · in ${led.tokens_in} · out ${led.tokens_out}` +
            (tiers ? ` · ${tiers}` : '')
        )
      );
      if (name !== 'default') {
        const controls = el('div', 'jp-CoreasonPanel-controls');
        for (const intent of ['pause', 'resume', 'abort'] as Intent[]) {
          const button = el('button', 'jp-Button jp-mod-styled', intent);
          button.dataset.intent = intent;
          // pausing a paused workflow or resuming a running one would do nothing
          button.disabled =
            this._send === null ||
            (intent === 'pause' && control === 'paused') ||
            (intent === 'resume' && !HALTED.has(control)) ||
            (intent === 'abort' && control === 'aborted');
          button.onclick = () => {
            if (this._send) {
              this._send(intent, name);
            }
          };
          controls.appendChild(button);
        }
        row.appendChild(controls);
      }
      rows.push(row);
    }
    if (rows.length === 0) {
      rows.push(el('div', 'jp-CoreasonPanel-empty', 'no workflows yet'));
    }
    this._ledgers.replaceChildren(...rows);
  }

  private _renderTasks(): void {
    const rows: HTMLElement[] = [];
    for (const [task, state] of this._taskState) {
      const row = el('div', 'jp-CoreasonPanel-task', `${task}: ${state}`);
      row.dataset.state = state;
      if (this._criticalPath.has(task)) {
        row.classList.add('jp-mod-critical');
      }
      rows.push(row);
    }
    if (rows.length === 0) {
      rows.push(el('div', 'jp-CoreasonPanel-empty', 'no tasks'));
    }
    this._tasks.replaceChildren(...rows);
  }
}
