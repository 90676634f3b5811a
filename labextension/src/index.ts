/**
 * coreason-lab JupyterLab extension: a side panel connected to the current notebook's kernel
 * through the `coreason` comm (opened by `%load_ext coreason_lab` in the kernel).
 */
import {
  ILabShell,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Kernel, KernelMessage } from '@jupyterlab/services';

import { CoreasonPanel, IEvent, ILedger, Intent } from './panel';

const TARGET = 'coreason';
const COMMAND = 'coreason:toggle-panel';

/** One comm to one kernel; reopened when the kernel restarts or the extension loads. */
class Connection {
  private _comm: Kernel.IComm | null = null;
  private _kernel: Kernel.IKernelConnection | null = null;
  private _opening = false;

  constructor(private _panel: CoreasonPanel) {}

  get connected(): boolean {
    return this._comm !== null && !this._comm.isDisposed;
  }

  attach(kernel: Kernel.IKernelConnection | null, label: string): void {
    if (kernel !== this._kernel) {
      this.close();
      if (this._kernel) {
        this._kernel.statusChanged.disconnect(this._onStatus, this);
      }
      this._kernel = kernel;
      this._panel.reset();
      if (kernel) {
        kernel.statusChanged.connect(this._onStatus, this);
      }
    }
    this._label = label;
    void this._open();
  }

  private _label = '';

  private _onStatus(_: Kernel.IKernelConnection, status: Kernel.Status): void {
    if (status === 'restarting' || status === 'autorestarting' || status === 'dead') {
      this.close();
      this._panel.setStatus(`${this._label}: kernel ${status}`, false);
    } else if (status === 'idle' && !this.connected) {
      // The extension may have been loaded by the cell that just finished.
      void this._open();
    }
  }

  private async _open(): Promise<void> {
    const kernel = this._kernel;
    if (!kernel || this.connected || this._opening) {
      if (!kernel) {
        this._panel.setStatus('no notebook kernel', false);
      }
      return;
    }
    this._opening = true;
    try {
      const info = await kernel.requestCommInfo({ target_name: TARGET });
      const comms = (info.content as any).comms;
      const registered =
        (info.content as any).status === 'ok' && comms !== undefined;
      if (!registered) {
        this._panel.setStatus(`${this._label}: run %load_ext coreason_lab`, false);
        return;
      }
      const comm = kernel.createComm(TARGET);
      comm.onMsg = (msg: KernelMessage.ICommMsgMsg) => this._onMsg(msg);
      comm.onClose = () => {
        this._comm = null;
        this._panel.sender = null;
        this._panel.setStatus(`${this._label}: runtime closed the channel`, false);
      };
      await comm.open({ type: 'hello' }).done;
      this._comm = comm;
      this._panel.sender = (intent: Intent, workflowId: string) =>
        this.send(intent, workflowId);
      this._panel.setStatus(`${this._label}: connected`, true);
    } catch (reason) {
      this._panel.setStatus(`${this._label}: runtime not reachable (${reason})`, false);
    } finally {
      this._opening = false;
    }
  }

  private _onMsg(msg: KernelMessage.ICommMsgMsg): void {
    const data = msg.content.data as any;
    switch (data.type) {
      case 'hello':
      case 'snapshot':
        this._panel.applySnapshot(
          (data.ledgers || []) as ILedger[],
          (data.workflows || []) as { workflow_id: string; state: string }[]
        );
        break;
      case 'events':
        this._panel.applyEvents((data.events || []) as IEvent[]);
        break;
      case 'ack':
        this._panel.applyAck(String(data.workflow_id), String(data.state));
        break;
      case 'error':
        this._panel.setStatus(`${this._label}: ${data.message}`, this.connected);
        break;
    }
  }

  send(intent: Intent, workflowId: string): void {
    if (this._comm && !this._comm.isDisposed) {
      this._comm.send({ type: 'intent', intent, workflow_id: workflowId });
    }
  }

  close(): void {
    if (this._comm && !this._comm.isDisposed) {
      this._comm.close();
    }
    this._comm = null;
    this._panel.sender = null;
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'coreason-lab:panel',
  description: 'A side panel showing the coreason runtime of the current notebook kernel.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ILabShell, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    labShell: ILabShell | null,
    palette: ICommandPalette | null
  ) => {
    const panel = new CoreasonPanel();
    const connection = new Connection(panel);
    app.shell.add(panel, 'right', { rank: 600 });

    const follow = (nb: NotebookPanel | null) => {
      if (!nb) {
        connection.attach(null, '');
        return;
      }
      const ctx = nb.sessionContext;
      const attach = () =>
        connection.attach(ctx.session?.kernel ?? null, nb.title.label || 'notebook');
      void ctx.ready.then(attach);
      ctx.kernelChanged.connect(attach);
    };
    tracker.currentChanged.connect((_, nb) => follow(nb));
    follow(tracker.currentWidget);

    app.commands.addCommand(COMMAND, {
      label: 'Show coreason runtime panel',
      execute: () => {
        if (labShell) {
          labShell.activateById(panel.id);
        }
      }
    });
    if (palette) {
      palette.addItem({ command: COMMAND, category: 'coreason' });
    }
  }
};

export default plugin;
