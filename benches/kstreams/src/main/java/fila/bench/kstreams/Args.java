package fila.bench.kstreams;

import java.util.HashMap;
import java.util.Map;

/** A tiny `--name value` option parser for the command-line tools here. */
final class Args {
    private Args() {}

    /** Parses options; -h or --help prints the usage and exits. */
    static Map<String, String> parse(String[] argv, String usage, String tool) {
        Map<String, String> args = new HashMap<>();
        for (int i = 0; i < argv.length; i++) {
            String a = argv[i];
            if (a.equals("--help") || a.equals("-h")) {
                System.out.println(usage);
                System.exit(0);
            }
            if (!a.startsWith("--") || i + 1 >= argv.length || !usage.contains(a + " ")) {
                fail(usage, tool, "unexpected argument '" + a + "'");
            }
            args.put(a.substring(2), argv[++i]);
        }
        return args;
    }

    /** A count between 1 and 1024, or the default when absent. */
    static int count(Map<String, String> args, String key, int dflt, String usage, String tool) {
        return count(args, key, dflt, 1, 1024, usage, tool);
    }

    /** A whole number between min and max, or the default when absent. */
    static int count(Map<String, String> args, String key, int dflt, int min, int max, String usage,
                     String tool) {
        String s = args.get(key);
        if (s == null) {
            return dflt;
        }
        try {
            int v = Integer.parseInt(s);
            if (v >= min && v <= max) {
                return v;
            }
        } catch (NumberFormatException e) {
            // fall through
        }
        fail(usage, tool, "--" + key + " needs a whole number between " + min + " and " + max + ", got '" + s + "'");
        return dflt;
    }

    static void fail(String usage, String tool, String message) {
        System.err.println(tool + ": " + message);
        System.err.println(usage);
        System.exit(2);
    }
}
