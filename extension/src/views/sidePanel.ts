// The activity-bar side panel: Model (what the engine read), Runs (this session's history; selecting one shows it
// in the routing panel) and Layers → Experts of the selected run (load, mean weight, share; context menu edits the
// current patch).
import * as vscode from 'vscode';
import type { Session } from '../session';
import type { LayerStats } from '../../../common/src/routing';
import { sortedLayers, type Run } from '../runs/run';
import { biasOf, describePatch } from '../../../common/src/patchEdit';
import { formatBytes, formatCount } from '../../../common/src/format';

// ---- Model ----------------------------------------------------------------------------------------------------

/** Fires `emitter` at most once per `ms`: streaming updates arrive per layer, the trees redraw at most every 200 ms. */
function throttledFire(emitter: vscode.EventEmitter<void>, ms = 200): () => void {
  let pending: NodeJS.Timeout | undefined;
  return () => {
    if (pending) return;
    pending = setTimeout(() => {
      pending = undefined;
      emitter.fire();
    }, ms);
  };
}

class ModelTree implements vscode.TreeDataProvider<vscode.TreeItem> {
  private readonly changes = new vscode.EventEmitter<void>();
  readonly onDidChangeTreeData = this.changes.event;

  constructor(private readonly session: Session) {
    session.onDidChangeModel(() => this.changes.fire());
    session.host.onDidExit(() => this.changes.fire());
    session.host.onDidStart(() => this.changes.fire());
  }

  refresh(): void {
    this.changes.fire();
  }

  getTreeItem(item: vscode.TreeItem): vscode.TreeItem {
    return item;
  }

  getChildren(): vscode.TreeItem[] {
    const loaded = this.session.model;
    if (!loaded) return [];
    const info = loaded.info;
    const row = (label: string, value: string, icon: string, tooltip?: string): vscode.TreeItem => {
      const item = new vscode.TreeItem(label);
      item.description = value;
      item.iconPath = new vscode.ThemeIcon(icon);
      item.tooltip = tooltip ?? `${label}: ${value}`;
      return item;
    };
    const dense = info.numLayers - info.moeLayers.length;
    return [
      row('Model', `${info.modelType} · ${info.dir.split(/[\\/]/).pop()}`, 'symbol-class', info.dir),
      row('Layers', `${info.numLayers}${dense ? ` (${info.moeLayers.length} MoE, ${dense} dense)` : ''}`, 'layers'),
      row('Experts', `${info.numExperts} per layer, top-${info.topK}${info.sharedExpertWidth ? ' + shared expert' : ''}`, 'extensions'),
      row('Routing', info.routingRule, 'git-compare'),
      row('Weights', `${info.dtype}, ${info.expertLayout} experts, ${info.shards} shard${info.shards === 1 ? '' : 's'}`, 'file-binary'),
      row('Parameters', `${formatCount(info.parameters)} (${formatCount(info.activeParameters)} active per token)`, 'symbol-number'),
      row('Memory', `${formatBytes(info.weightBytes)} weights (${info.weights}), ${info.kvCache} KV cache; engine process ${formatBytes(loaded.rssBytes)}`, 'server'),
      row('Backend', `${info.backend}, ${info.threads} thread${info.threads === 1 ? '' : 's'}`, 'chip'),
      row('Tokenizer', loaded.tokenizer ? 'tokenizer.json' : `none (${loaded.tokenizerError ?? 'missing'})`, 'symbol-string'),
      row('Engine process', this.session.host.running ? `pid ${this.session.host.pid}` : 'stopped (starts on the next action)', 'pulse'),
      ...info.warnings.map((w) => row('Warning', w, 'warning')),
    ];
  }
}

// ---- Runs -----------------------------------------------------------------------------------------------------

export class RunItem extends vscode.TreeItem {
  constructor(readonly run: Run, selected: boolean) {
    super(run.label);
    const time = new Date(run.startedAt).toLocaleTimeString();
    const status = run.error ? 'failed' : run.finishedAt === undefined ? 'running…' : `${run.tokens.length} tokens`;
    this.description = `${status} · ${time}${run.patch ? ' · patched' : ''}`;
    this.id = `run-${run.id}`;
    this.contextValue = 'routescope.run';
    this.iconPath = new vscode.ThemeIcon(
      run.error ? 'error' : run.finishedAt === undefined ? 'loading~spin' : selected ? 'eye' : run.kind === 'generate' ? 'comment-discussion' : 'search',
    );
    const patch = describePatch(run.patch);
    this.tooltip = new vscode.MarkdownString(
      [`**${run.kind}** #${run.id} on \`${run.model.name}\``, '', '```', run.prompt, '```', '', `patch: ${patch}`, run.error ? `\n\nerror: ${run.error}` : ''].join('\n'),
    );
    this.command = { command: 'routescope.showRun', title: 'Show Run', arguments: [run.id] };
  }
}

class RunsTree implements vscode.TreeDataProvider<RunItem> {
  private readonly changes = new vscode.EventEmitter<void>();
  readonly onDidChangeTreeData = this.changes.event;
  private readonly schedule = throttledFire(this.changes);

  constructor(private readonly session: Session) {
    session.runs.onDidChange(() => this.schedule());
  }


  getTreeItem(item: RunItem): vscode.TreeItem {
    return item;
  }

  getChildren(): RunItem[] {
    const selected = this.session.runs.selected;
    return [...this.session.runs.all()].reverse().map((r) => new RunItem(r, r === selected));
  }

  getParent(): undefined {
    return undefined;
  }
}

// ---- Layers → Experts -----------------------------------------------------------------------------------------

export interface ExpertRef {
  layer: number;
  expert: number;
}

class LayerItem extends vscode.TreeItem {
  constructor(readonly stats: LayerStats, readonly numExperts: number) {
    super(`Layer ${stats.layer}`, vscode.TreeItemCollapsibleState.Collapsed);
    this.id = `layer-${stats.layer}`;
    this.description = `router entropy ${stats.meanEntropy.toFixed(2)} nats · balance ${stats.switchBalance.toFixed(2)} · load CV ${stats.loadCv.toFixed(2)}${stats.unusedExperts ? ` · ${stats.unusedExperts} unused` : ''}`;
    this.tooltip = [
      `Layer ${stats.layer}: ${stats.tokens} tokens`,
      `mean router entropy ${stats.meanEntropy.toFixed(3)} nats (max ${Math.log(numExperts).toFixed(3)})`,
      `load balance E·Σ f·P = ${stats.switchBalance.toFixed(3)} (1 = even)`,
      `coefficient of variation of loads ${stats.loadCv.toFixed(3)}`,
      `mean top-1 weight ${stats.meanTop1Weight.toFixed(3)}`,
    ].join('\n');
    this.iconPath = new vscode.ThemeIcon('layers');
    this.contextValue = 'routescope.layer';
  }
}

export class ExpertItem extends vscode.TreeItem {
  readonly ref: ExpertRef;
  constructor(layer: number, expert: number, stats: LayerStats, marks: string[]) {
    const s = stats.experts[expert];
    super(`Expert ${expert}`);
    this.ref = { layer, expert };
    this.id = `layer-${layer}-expert-${expert}`;
    this.description = `load ${s.load} · weight ${s.meanWeight.toFixed(2)} · share ${(s.share * 100).toFixed(0)}%${marks.length ? ` · ${marks.join(', ')}` : ''}`;
    this.tooltip = `Layer ${layer}, expert ${expert}\nload ${s.load} (token, slot) assignments\nmean weight ${s.meanWeight.toFixed(4)}\nshare of tokens ${(s.share * 100).toFixed(1)}%\nmean router probability ${s.meanProb.toFixed(4)}`;
    this.iconPath = new vscode.ThemeIcon(marks.includes('masked') ? 'circle-slash' : marks.includes('forced') ? 'pinned' : 'circle-filled');
    this.contextValue = 'routescope.expert';
  }
}

type LayersNode = LayerItem | ExpertItem;

class LayersTree implements vscode.TreeDataProvider<LayersNode> {
  private readonly changes = new vscode.EventEmitter<void>();
  readonly onDidChangeTreeData = this.changes.event;
  private cache: { run: Run; filled: number; stats: LayerStats[] } | undefined;
  private readonly schedule = throttledFire(this.changes);

  constructor(private readonly session: Session) {
    session.runs.onDidChange((c) => {
      if (c.kind === 'selected' || c.kind === 'cleared' || c.run === session.runs.selected) this.schedule();
    });
    session.onDidChangePatch(() => this.schedule());
  }


  private stats(run: Run): LayerStats[] {
    let filled = 0;
    for (const l of run.layers.values()) filled += l.filled;
    if (this.cache?.run !== run || this.cache.filled !== filled) {
      const stats = sortedLayers(run).filter((l) => l.filled > 0).map((l) => l.stats());
      this.cache = { run, filled, stats };
    }
    return this.cache.stats;
  }

  getTreeItem(item: LayersNode): vscode.TreeItem {
    return item;
  }

  getChildren(parent?: LayersNode): LayersNode[] {
    const run = this.session.runs.selected;
    if (!run) return [];
    const stats = this.stats(run);
    if (!parent) return stats.map((s) => new LayerItem(s, run.model.numExperts));
    if (!(parent instanceof LayerItem)) return [];
    const layerPatch = this.session.patch.layers[String(parent.stats.layer)];
    return parent.stats.experts.map((_, e) => {
      const marks: string[] = [];
      if (layerPatch?.mask?.includes(e)) marks.push('masked');
      if (layerPatch?.force?.includes(e)) marks.push('forced');
      const b = biasOf(this.session.patch, parent.stats.layer, e);
      if (b) marks.push(`bias ${b > 0 ? '+' : ''}${b}`);
      return new ExpertItem(parent.stats.layer, e, parent.stats, marks);
    });
  }
}

export interface SidePanel {
  runsView: vscode.TreeView<RunItem>;
  refreshModel(): void;
}

export function registerSidePanel(session: Session): { panel: SidePanel; disposables: vscode.Disposable[] } {
  const model = new ModelTree(session);
  const runs = new RunsTree(session);
  const layers = new LayersTree(session);
  const modelView = vscode.window.createTreeView('routescope.model', { treeDataProvider: model });
  const runsView = vscode.window.createTreeView('routescope.runs', { treeDataProvider: runs });
  const layersView = vscode.window.createTreeView('routescope.layers', { treeDataProvider: layers });
  const describeSelected = (): void => {
    const run = session.runs.selected;
    // Setting the title alongside the description keeps the header's name (code-server blanks it otherwise).
    layersView.title = 'Layers';
    layersView.description = run ? `run #${run.id}` : '';
  };
  describeSelected();
  const disposables: vscode.Disposable[] = [
    modelView,
    runsView,
    layersView,
    session.runs.onDidChange(describeSelected),
  ];
  return { panel: { runsView, refreshModel: () => model.refresh() }, disposables };
}
