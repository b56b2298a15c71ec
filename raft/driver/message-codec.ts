// Wire format for Raft messages between members: a msgpack array of messages per frame. Everything
// decoded from a peer is validated field by field before the core sees it, so a malformed or hostile
// frame is rejected with a message naming the field, never a crash or a corrupted log.
import { Packr } from 'msgpackr';
import type { Message, MessageType } from '../core/messages.ts';
import { MESSAGE_TYPES } from '../core/messages.ts';
import type { ConfState, Entry, SnapshotMeta } from '../types.ts';

const packr = new Packr({ useRecords: false, moreTypes: false });

/** Largest frame accepted from a peer. */
export const MAX_FRAME_BYTES = 64 * 1024 * 1024;

export class InvalidMessageError extends Error {
  constructor(what: string) {
    super(`invalid raft message: ${what}`);
    this.name = 'InvalidMessageError';
  }
}

export function encodeMessages(messages: Message[]): Uint8Array {
  return packr.pack(messages);
}

export function decodeMessages(frame: Uint8Array): Message[] {
  if (frame.byteLength > MAX_FRAME_BYTES)
    throw new InvalidMessageError(`frame of ${frame.byteLength} bytes is too large`);
  let value: unknown;
  try {
    value = packr.unpack(frame);
  } catch (error) {
    throw new InvalidMessageError(`undecodable frame (${error instanceof Error ? error.message : String(error)})`);
  }
  if (!Array.isArray(value)) throw new InvalidMessageError('frame is not a list of messages');
  return value.map((m, i) => validateMessage(m, `message ${i}`));
}

type Obj = Record<string, unknown>;

function obj(value: unknown, where: string): Obj {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new InvalidMessageError(`${where} is not an object`);
  return value as Obj;
}

function str(o: Obj, key: string, where: string, maxLength = 256): string {
  const v = o[key];
  if (typeof v !== 'string' || v.length > maxLength) throw new InvalidMessageError(`${where}.${key} must be a string`);
  return v;
}

function nullableStr(o: Obj, key: string, where: string): string | null {
  return o[key] === null || o[key] === undefined ? null : str(o, key, where);
}

function index(o: Obj, key: string, where: string): number {
  const v = o[key];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new InvalidMessageError(`${where}.${key} must be a non-negative integer`);
  }
  return v;
}

function bool(o: Obj, key: string, where: string): boolean {
  const v = o[key];
  if (typeof v !== 'boolean') throw new InvalidMessageError(`${where}.${key} must be a boolean`);
  return v;
}

function bytes(o: Obj, key: string, where: string): Uint8Array {
  const v = o[key];
  if (!(v instanceof Uint8Array)) throw new InvalidMessageError(`${where}.${key} must be bytes`);
  return v;
}

function entries(o: Obj, where: string): Entry[] {
  const v = o.entries;
  if (!Array.isArray(v)) throw new InvalidMessageError(`${where}.entries must be a list`);
  return v.map((raw, i) => {
    const at = `${where}.entries[${i}]`;
    const e = obj(raw, at);
    const type = index(e, 'type', at);
    if (type > 2) throw new InvalidMessageError(`${at}.type ${type} is unknown`);
    return {
      index: index(e, 'index', at),
      term: index(e, 'term', at),
      type: type as Entry['type'],
      data: bytes(e, 'data', at),
    };
  });
}

function idList(o: Obj, key: string, where: string): string[] {
  const v = o[key];
  if (!Array.isArray(v) || v.some((id) => typeof id !== 'string'))
    throw new InvalidMessageError(`${where}.${key} must be a list of ids`);
  return v as string[];
}

function snapshotMeta(o: Obj, where: string): SnapshotMeta {
  const meta = obj(o.meta, `${where}.meta`);
  const conf = obj(meta.conf, `${where}.meta.conf`);
  const confState: ConfState = {
    voters: idList(conf, 'voters', `${where}.meta.conf`),
    learners: idList(conf, 'learners', `${where}.meta.conf`),
  };
  return { index: index(meta, 'index', `${where}.meta`), term: index(meta, 'term', `${where}.meta`), conf: confState };
}

export function validateMessage(value: unknown, where = 'message'): Message {
  const o = obj(value, where);
  const type = o.type;
  if (typeof type !== 'string' || !MESSAGE_TYPES.includes(type as MessageType)) {
    throw new InvalidMessageError(`${where}.type ${JSON.stringify(type)} is unknown`);
  }
  const base = { from: str(o, 'from', where), to: str(o, 'to', where), term: index(o, 'term', where) };
  const t = type as MessageType;
  switch (t) {
    case 'PreVote':
    case 'Vote':
      return {
        ...base,
        type: t,
        lastLogIndex: index(o, 'lastLogIndex', where),
        lastLogTerm: index(o, 'lastLogTerm', where),
        transfer: bool(o, 'transfer', where),
      };
    case 'PreVoteResp':
    case 'VoteResp':
      return { ...base, type: t, reject: bool(o, 'reject', where) };
    case 'App':
      return {
        ...base,
        type: t,
        prevIndex: index(o, 'prevIndex', where),
        prevTerm: index(o, 'prevTerm', where),
        entries: entries(o, where),
        commit: index(o, 'commit', where),
      };
    case 'AppResp':
      return {
        ...base,
        type: t,
        index: index(o, 'index', where),
        reject: bool(o, 'reject', where),
        rejectHint: index(o, 'rejectHint', where),
        hintTerm: index(o, 'hintTerm', where),
      };
    case 'Heartbeat':
      return {
        ...base,
        type: t,
        commit: index(o, 'commit', where),
        readId: nullableStr(o, 'readId', where),
        tick: index(o, 'tick', where),
      };
    case 'HeartbeatResp':
      return { ...base, type: t, readId: nullableStr(o, 'readId', where), tick: index(o, 'tick', where) };
    case 'Snap':
      return {
        ...base,
        type: t,
        meta: snapshotMeta(o, where),
        offset: index(o, 'offset', where),
        totalBytes: index(o, 'totalBytes', where),
        chunk: bytes(o, 'chunk', where),
      };
    case 'SnapAck':
      return {
        ...base,
        type: t,
        snapshotIndex: index(o, 'snapshotIndex', where),
        received: index(o, 'received', where),
      };
    case 'Prop':
      return { ...base, type: t, entries: entries(o, where) };
    case 'ReadIndex':
      return { ...base, type: t, readId: str(o, 'readId', where) };
    case 'ReadIndexResp':
      return { ...base, type: t, readId: str(o, 'readId', where), index: index(o, 'index', where) };
    case 'TimeoutNow':
      return { ...base, type: t };
    case 'TransferLeader':
      return { ...base, type: t, transferee: str(o, 'transferee', where) };
  }
}
