package fila.bench.kstreams;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

/**
 * A reference record: the input fields, and the five results once the
 * stages have run.
 */
public class FibRecord {
    /** Stages of the reference job, and so stageK / fibK fields. */
    public static final int STAGES = 5;
    /** The largest stage value accepted; fib(45) already takes seconds. */
    public static final int MAX_STAGE = 45;

    private static final ObjectMapper JSON = new ObjectMapper();

    public long id;
    public int[] stages = new int[STAGES];
    /** Milliseconds since the Unix epoch, set by the producer. */
    public long timestamp;
    public long[] fibs = new long[STAGES];

    public FibRecord() {}

    /** Naive recursive Fibonacci: the CPU-heavy work of the job. */
    public static long fib(int n) {
        return n < 2 ? n : fib(n - 1) + fib(n - 2);
    }

    /** Runs stage k (0-based): fibK = fib(stageK). */
    public FibRecord stage(int k) {
        fibs[k] = fib(stages[k]);
        return this;
    }

    /**
     * Decodes one input message.
     *
     * @throws IllegalArgumentException if it is not a reference record
     */
    public static FibRecord parse(String text) {
        JsonNode node;
        try {
            node = JSON.readTree(text);
        } catch (JsonProcessingException e) {
            throw new IllegalArgumentException("not JSON: " + e.getOriginalMessage());
        }
        if (node == null || !node.isObject()) {
            throw new IllegalArgumentException("not a JSON object");
        }
        FibRecord r = new FibRecord();
        r.id = whole(node, "id", Long.MAX_VALUE);
        r.timestamp = whole(node, "timestamp", Long.MAX_VALUE);
        for (int k = 0; k < STAGES; k++) {
            r.stages[k] = (int) whole(node, "stage" + (k + 1), MAX_STAGE);
        }
        return r;
    }

    private static long whole(JsonNode node, String field, long max) {
        JsonNode v = node.get(field);
        if (v == null || !v.isIntegralNumber() || !v.canConvertToLong()) {
            throw new IllegalArgumentException("field " + field + " missing or not a whole number");
        }
        long x = v.asLong();
        if (x < 0 || x > max) {
            throw new IllegalArgumentException("field " + field + " = " + x + " out of range 0.." + max);
        }
        return x;
    }

    /** The output message: the input fields, then fib1 to fib5. */
    public String toJson() {
        StringBuilder b = new StringBuilder(160);
        b.append("{\"id\":").append(id);
        for (int k = 0; k < STAGES; k++) {
            b.append(",\"stage").append(k + 1).append("\":").append(stages[k]);
        }
        b.append(",\"timestamp\":").append(timestamp);
        for (int k = 0; k < STAGES; k++) {
            b.append(",\"fib").append(k + 1).append("\":").append(fibs[k]);
        }
        return b.append('}').toString();
    }
}
