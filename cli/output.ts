// How the CLI prints: docker-style aligned tables for people, JSON for scripts.
import type { Output } from './command.ts';

/** Columns padded to their widest cell plus three spaces, like docker's tabwriter; no trailing blanks. */
export function renderTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((header, column) =>
    Math.max(header.length, ...rows.map((row) => (row[column] ?? '').length)),
  );
  const line = (cells: readonly string[]) =>
    cells
      .map((cell, column) => (column === cells.length - 1 ? cell : cell.padEnd(widths[column]! + 3)))
      .join('')
      .trimEnd();
  return `${[headers, ...rows].map(line).join('\n')}\n`;
}

/** `Key:   value` lines with the values aligned; a nested list is indented under its key. */
export function renderFields(fields: readonly (readonly [string, string | readonly string[]])[]): string {
  const width = Math.max(...fields.map(([key]) => key.length)) + 2;
  const lines: string[] = [];
  for (const [key, value] of fields) {
    if (typeof value === 'string') {
      lines.push(`${`${key}:`.padEnd(width)} ${value}`.trimEnd());
    } else {
      lines.push(`${key}:`);
      for (const item of value) lines.push(`  ${item}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

export function writeJson(out: Output, value: unknown): void {
  out.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** IDs are shown at 12 characters, as docker does: enough to be unique, short enough to type. */
export function shortId(id: string): string {
  return id.slice(0, 12);
}

export function capitalize(word: string): string {
  return word.charAt(0).toUpperCase() + word.slice(1);
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value}B` : `${value.toFixed(2).replace(/\.?0+$/, '')}${units[unit]}`;
}
