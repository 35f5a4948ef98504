// The cell views: the hover tooltip and the "Pinned cell" panel (both render details.ts's content; the pinned one
// adds quick mask buttons and picks the expert to edit), and the screen-reader announcement of the selected cell.
import type { RoutingPatch } from '../../../common/src/patch';
import type { PatchEdit } from '../../../common/src/patchEdit';
import { visibleToken } from '../../../common/src/format';
import { barAt } from '../charts/bars';
import { renderCellDetails, type CellDetails } from '../details';
import { fixed } from '../format';
import type { CellRef, RoutingGrid } from '../grid';
import { $ } from '../page';
import type { RunRouting } from '../runData';
import type { Theme } from '../theme';
import { Tooltip } from '../tooltip';

const PIN_HINT = '<p class="muted">Click a cell (or select it with the arrow keys and press Enter) to pin its details here.</p>';

export interface CellViewsContext {
  grid: RoutingGrid;
  primary(): RunRouting | undefined;
  compare(): RunRouting | undefined;
  patch(): RoutingPatch | undefined;
  theme(): Theme;
  /** An expert picked for the patch editor (focus: move the keyboard focus to it). */
  pick(layer: number, expert: number, focus: boolean): void;
  edit(edit: PatchEdit): void;
}

export class CellViews {
  private readonly tooltip = new Tooltip($('tooltip'));
  private readonly pinnedHost = $('pinned');

  constructor(private readonly c: CellViewsContext) {
    this.pinnedHost.innerHTML = PIN_HINT;
  }

  /** What a grid cell shows; in compare mode A on the left, B on the right, whichever band was pointed at. */
  details(cell: CellRef): CellDetails | undefined {
    const band = this.c.grid.bandAt(cell.band);
    if (!band) return undefined;
    const run = band.run;
    const d: CellDetails = { run, row: cell.row, position: cell.position, block: this.c.grid.block };
    const primary = this.c.primary();
    const compare = this.c.compare();
    if (compare && primary) {
      const other = run === primary ? compare : primary;
      d.other = { run: other, row: other.rowOfLayer(run.layers[cell.row]) };
      if (run !== primary) {
        d.run = primary;
        d.row = primary.rowOfLayer(run.layers[cell.row]) ?? cell.row;
        d.other = { run, row: cell.row };
      }
    }
    return d;
  }

  showTooltip(cell: CellRef | undefined, x: number, y: number): void {
    const d = cell && this.details(cell);
    if (!d) return this.hideTooltip();
    renderCellDetails(this.tooltip.element, d, this.c.theme(), this.c.patch(), 260);
    this.tooltip.place(x, y);
  }

  showText(text: string | undefined, x: number, y: number): void {
    this.tooltip.showText(text, x, y);
  }

  hideTooltip(): void {
    this.tooltip.hide();
  }

  renderPinned(pinned: CellRef | undefined): void {
    const host = this.pinnedHost;
    if (!pinned) {
      host.innerHTML = PIN_HINT;
      return;
    }
    const d = this.details(pinned);
    if (!d) return;
    const width = Math.max(200, Math.min(480, host.clientWidth - 8));
    const chart = renderCellDetails(host, d, this.c.theme(), this.c.patch(), width);
    const layer = d.run.layers[d.row];
    if (chart) {
      const { canvas, bars } = chart;
      canvas.title = 'Click a bar to pick that expert for editing';
      canvas.addEventListener('click', (e) => {
        // One bar per expert, so the bar under the pointer is the expert.
        const expert = barAt(e.clientX - canvas.getBoundingClientRect().left, bars);
        if (expert !== undefined) this.c.pick(layer, expert, true);
      });
    }
    const quick = document.createElement('div');
    quick.className = 'quick-edits';
    for (const { expert } of d.run.cell(d.row, d.position)) {
      const mask = document.createElement('button');
      mask.textContent = `Mask ${expert} at L${layer}`;
      mask.addEventListener('click', () => this.c.edit({ op: 'mask', layer, expert }));
      quick.appendChild(mask);
    }
    const hint = document.createElement('span');
    hint.className = 'muted small';
    hint.textContent = ' Click a bar to pick any expert for the patch editor.';
    quick.appendChild(hint);
    host.appendChild(quick);
    this.c.pick(layer, d.run.cell(d.row, d.position)[0]?.expert ?? 0, false);
  }

  announce(cell: CellRef): void {
    const d = this.details(cell);
    if (!d) return;
    const experts = d.run.cell(d.row, d.position).map((c) => `expert ${c.expert} ${fixed(c.weight, 2)}`).join(', ') || 'not computed yet';
    const text = d.run.info.tokenText[d.position];
    $('announce').textContent = `Layer ${d.run.layers[d.row]}, token ${text ? visibleToken(text) : `#${d.run.info.tokens[d.position]}`} at position ${d.position}: ${experts}`;
  }
}
