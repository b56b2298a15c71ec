// The version of swarmd and its CLI, shared without pulling the daemon into the client.
export const SWARMD_VERSION = '0.1.0';
