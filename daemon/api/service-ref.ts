// How a service named by a user is found: the way docker does it (ID, then name, then unique ID prefix).
import { ambiguousServicePrefix, noSuchService } from './errors.ts';

interface NamedService {
  id: string;
  spec: { name: string };
}

/**
 * Finds the service `ref` names: a full ID first, then a name (names are unique), then a unique ID prefix.
 * Throws 404 when nothing matches and 409 when a prefix matches more than one service.
 */
export function resolveServiceRef<T extends NamedService>(services: Iterable<T>, ref: string): T {
  const all = [...services];
  if (ref === '') throw noSuchService(ref);
  const found = all.find((service) => service.id === ref) ?? all.find((service) => service.spec.name === ref);
  if (found) return found;
  const byPrefix = all.filter((service) => service.id.startsWith(ref));
  if (byPrefix.length === 1) return byPrefix[0]!;
  if (byPrefix.length > 1) throw ambiguousServicePrefix(ref, byPrefix.length);
  throw noSuchService(ref);
}
