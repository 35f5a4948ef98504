// The pointer tooltip of a panel (the page's #tooltip element): text or any content, placed beside the pointer and
// kept inside the window.
export class Tooltip {
  constructor(readonly element: HTMLElement) {}

  /** Shows `text` (line breaks kept) at client coordinates; undefined hides it. */
  showText(text: string | undefined, x: number, y: number): void {
    if (!text) return this.hide();
    this.element.replaceChildren(document.createTextNode(text));
    this.place(x, y);
  }

  /** Shows what was rendered into `element` at client coordinates. */
  place(x: number, y: number): void {
    const tip = this.element;
    tip.hidden = false;
    const w = tip.offsetWidth;
    const h = tip.offsetHeight;
    const left = x + 16 + w > window.innerWidth ? Math.max(0, x - 16 - w) : x + 16;
    const top = y + 16 + h > window.innerHeight ? Math.max(0, y - 16 - h) : y + 16;
    tip.style.left = `${left}px`;
    tip.style.top = `${top}px`;
  }

  hide(): void {
    this.element.hidden = true;
  }
}
