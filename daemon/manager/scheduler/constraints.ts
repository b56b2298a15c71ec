// Placement constraints ("node.labels.zone==edge") and spread descriptors ("node.labels.rack") against nodes.
// Same syntax and matching as swarmkit's manager/constraint: keys are case-insensitive except the label name,
// values compare case-insensitively, and a missing label reads as "" (so "node.labels.x!=y" matches it).
// Kept internal to the scheduler for now; the API's parseConstraint validates the same syntax.
import type { SchedulerNode } from './types.ts';

export type NodeAttribute = (node: SchedulerNode) => string;

export interface NodeConstraint {
  text: string;
  attribute: NodeAttribute;
  equal: boolean;
  value: string;
  /** value.toLowerCase(), computed once: matching runs once per node per service. */
  lower: string;
}

const LABEL_PREFIX = 'node.labels.';

const FIXED: Record<string, NodeAttribute> = {
  'node.id': (n) => n.id,
  'node.hostname': (n) => n.hostname,
  'node.role': (n) => n.role,
  'node.platform.os': (n) => n.os,
  'node.platform.arch': (n) => n.arch,
};

/** The attribute a key names, or null when the key is not one the scheduler knows. */
export function nodeAttribute(key: string): NodeAttribute | null {
  const trimmed = key.trim();
  if (trimmed.length > LABEL_PREFIX.length && trimmed.slice(0, LABEL_PREFIX.length).toLowerCase() === LABEL_PREFIX) {
    const label = trimmed.slice(LABEL_PREFIX.length);
    if (/[\s=!]/.test(label)) return null;
    return (n) => n.labels[label] ?? '';
  }
  return FIXED[trimmed.toLowerCase()] ?? null;
}

/** Parses "key==value" or "key!=value"; null when it is not a valid constraint. */
export function parseNodeConstraint(text: string): NodeConstraint | null {
  const eq = text.indexOf('==');
  const ne = text.indexOf('!=');
  const at = eq < 0 ? ne : ne < 0 ? eq : Math.min(eq, ne);
  if (at <= 0) return null;
  const attribute = nodeAttribute(text.slice(0, at));
  const value = text.slice(at + 2).trim();
  if (!attribute || value === '' || /[=!]=/.test(value)) return null;
  return { text, attribute, equal: at === eq, value, lower: value.toLowerCase() };
}

export function constraintMatches(c: NodeConstraint, node: SchedulerNode): boolean {
  const actual = c.attribute(node);
  const same = actual === c.value || actual.toLowerCase() === c.lower;
  return same === c.equal;
}

export function allMatch(constraints: readonly NodeConstraint[], node: SchedulerNode): boolean {
  for (const c of constraints) if (!constraintMatches(c, node)) return false;
  return true;
}
