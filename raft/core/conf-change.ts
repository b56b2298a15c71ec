// Membership changes, one server at a time. A new member joins as a learner (replicates, never votes),
// and is promoted to voter once it has caught up, so adding it never stalls commits.
import type { ConfState, NodeId } from '../types.ts';

export interface ConfChange {
  type: 'addLearner' | 'addVoter' | 'remove';
  node: NodeId;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function encodeConfChange(change: ConfChange): Uint8Array {
  return encoder.encode(JSON.stringify(change));
}

export function decodeConfChange(data: Uint8Array): ConfChange {
  const parsed: unknown = JSON.parse(decoder.decode(data));
  if (
    typeof parsed !== 'object' ||
    parsed === null ||
    !['addLearner', 'addVoter', 'remove'].includes((parsed as ConfChange).type) ||
    typeof (parsed as ConfChange).node !== 'string'
  ) {
    throw new Error('malformed conf change entry');
  }
  return parsed as ConfChange;
}

/** The membership that results from applying one change. Adding a voter promotes a learner. */
export function applyConfChange(conf: ConfState, change: ConfChange): ConfState {
  const voters = conf.voters.filter((id) => id !== change.node);
  const learners = conf.learners.filter((id) => id !== change.node);
  if (change.type === 'addVoter') voters.push(change.node);
  if (change.type === 'addLearner') learners.push(change.node);
  return { voters: voters.sort(), learners: learners.sort() };
}

export function cloneConf(conf: ConfState): ConfState {
  return { voters: [...conf.voters], learners: [...conf.learners] };
}
