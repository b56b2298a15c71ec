// Types of build.mjs, which stays plain JavaScript (it runs before anything else is installed).

/** Where the addon is built. */
export declare const NATIVE_RELAY_ADDON: string;

/** Builds the addon if it is missing or older than relay.c: undefined when it is there, else why it is not. */
export declare function buildNativeRelay(options?: { sanitize?: boolean }): string | undefined;
