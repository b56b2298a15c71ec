// The scheduler's public surface: schedule() / scheduleInChunks() and their plain-data types.
export { schedule, scheduleInChunks } from './scheduler.ts';
export type { Placement, SchedulerGpu, SchedulerNode, SchedulingInput, SchedulingResult, Unplaced } from './types.ts';
export { schedulerNode } from './types.ts';
