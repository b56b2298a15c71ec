// The leader's bridge to the scheduler (node records in the scheduler's terms live beside it).
export { scheduleInChunks, schedulerNode as toSchedulerNode } from './scheduler/index.ts';
