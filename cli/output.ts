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

/** docker's units.HumanDuration: "Less than a second", "5 seconds", "About a minute", "3 hours", "2 weeks". */
export function humanDuration(ms: number): string {
  const seconds = Math.floor(ms / 1000);
  if (seconds < 1) return 'Less than a second';
  if (seconds === 1) return '1 second';
  if (seconds < 60) return `${seconds} seconds`;
  const minutes = Math.floor(seconds / 60);
  if (minutes === 1) return 'About a minute';
  if (minutes < 60) return `${minutes} minutes`;
  const hours = Math.round(ms / 3_600_000);
  if (hours === 1) return 'About an hour';
  if (hours < 48) return `${hours} hours`;
  if (hours < 24 * 7 * 2) return `${Math.floor(hours / 24)} days`;
  if (hours < 24 * 30 * 2) return `${Math.floor(hours / 24 / 7)} weeks`;
  if (hours < 24 * 365 * 2) return `${Math.floor(hours / 24 / 30)} months`;
  return `${Math.floor(ms / 3_600_000 / 24 / 365)} years`;
}
