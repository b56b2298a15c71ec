// How a node named by a user is found: the way docker does it, so muscle memory carries over.
import { ambiguousHostname, ambiguousPrefix, noSuchNode } from './errors.ts';

interface NamedNode {
  id: string;
  description: { hostname: string };
}

/**
 * Finds the node `ref` names: a full ID first, then a hostname, then a unique ID prefix. Throws 404 when
 * nothing matches and 409 when a hostname or prefix matches more than one node.
 */
export function resolveNodeRef<T extends NamedNode>(nodes: Iterable<T>, ref: string): T {
  const all = [...nodes];
  if (ref === '') throw noSuchNode(ref);
  const exact = all.find((node) => node.id === ref);
  if (exact) return exact;
  const byHostname = all.filter((node) => node.description.hostname === ref);
  if (byHostname.length === 1) return byHostname[0]!;
  if (byHostname.length > 1) throw ambiguousHostname(ref, byHostname.length);
  const byPrefix = all.filter((node) => node.id.startsWith(ref));
  if (byPrefix.length === 1) return byPrefix[0]!;
  if (byPrefix.length > 1) throw ambiguousPrefix(ref, byPrefix.length);
  throw noSuchNode(ref);
}
