package fila.bench.flink;

import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.regex.Pattern;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.api.common.JobStatus;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichFlatMapFunction;
import org.apache.flink.api.common.functions.RichReduceFunction;
import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.connector.kafka.sink.KafkaSink;
import org.apache.flink.connector.kafka.sink.KafkaSinkBuilder;
import org.apache.flink.connector.kafka.source.KafkaSource;
import org.apache.flink.connector.kafka.source.KafkaSourceBuilder;
import org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer;
import org.apache.flink.core.execution.JobClient;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.util.Collector;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Word count on Flink's DataStream API, in a local MiniCluster as FibJob
 * runs: a Kafka source of lines (JSON {"text": ...}), a flatMap into
 * (word, 1) for every lowercase word (split on anything that is not a
 * letter or a digit; chained to the source), keyBy(word), a running sum
 * (reduce, on the heap state backend), and a Kafka sink writing every
 * updated count: key the word (UTF-8), value {"word": w, "count": n}, the
 * record fila's wordcount example writes.
 *
 * <p>Guarantees and checkpoints as FibJob: at least once, checkpoints every
 * --checkpoint-interval-ms (5 s) commit the source's offsets and flush the
 * sink, which writes as it goes; exactly once, each checkpoint interval
 * (100 ms) is one Kafka transaction of the sink, visible to a
 * read-committed reader once the checkpoint completes.
 *
 * <p>Prints "flink: RUNNING" on stdout once the job runs and every
 * operator instance is open; cancels the job on SIGTERM.
 */
public final class WordCountJob {
    private static final Logger LOG = LoggerFactory.getLogger(WordCountJob.class);

    /** Input values that are not {"text": "..."}, skipped. */
    static final AtomicLong BAD_RECORDS = new AtomicLong();
    /** Operator instances opened: split and count. */
    static final AtomicInteger OPENED = new AtomicInteger();

    private static final String USAGE = String.join("\n",
        "usage: java -cp 'target/job.jar:target/lib/*' fila.bench.flink.WordCountJob [options]",
        "  --brokers HOST:PORT[,...]   Kafka bootstrap servers [127.0.0.1:9092]",
        "  --input-topic T             lines, JSON {\"text\": ...} [lines]",
        "  --output-topic T            counts [counts]",
        "  --group G                   consumer group of the source [wordcount-flink]",
        "  --parallelism P             every operator's parallelism [1]",
        "  --taskmanagers N            task managers in the MiniCluster [1]",
        "  --slots N                   slots per task manager [P / task managers, rounded up]",
        "  --buffer-timeout-ms MS      network buffer flush interval; 0 flushes per record [100]",
        "  --guarantee G               at-least-once or exactly-once [at-least-once]",
        "  --checkpoint-interval-ms MS checkpoint interval [5000 at least once, 100 exactly",
        "                              once]; 0 turns them off (at least once only)",
        "  --transaction-timeout-ms MS exactly once: the sink producer's",
        "                              transaction.timeout.ms [900000]",
        "  --transactional-id-prefix P exactly once: the sink's transactional id prefix",
        "                              [GROUP-<start time in ms>]");

    private WordCountJob() {}

    public static void main(String[] argv) throws Exception {
        Map<String, String> args = parseArgs(argv);
        String brokers = args.getOrDefault("brokers", "127.0.0.1:9092");
        String inputTopic = args.getOrDefault("input-topic", "lines");
        String outputTopic = args.getOrDefault("output-topic", "counts");
        String group = args.getOrDefault("group", "wordcount-flink");
        int par = (int) count(args, "parallelism", 1, 1, 1024);
        int taskManagers = (int) count(args, "taskmanagers", 1, 1, 1024);
        int slots = (int) count(args, "slots", (par + taskManagers - 1) / taskManagers, 1, 1024);
        if ((long) slots * taskManagers < par) {
            usage("--slots " + slots + " x --taskmanagers " + taskManagers + " is less than the parallelism " + par);
        }
        long bufferTimeout = count(args, "buffer-timeout-ms", 100, 0, Long.MAX_VALUE);
        String guarantee = args.getOrDefault("guarantee", "at-least-once");
        if (!guarantee.equals("at-least-once") && !guarantee.equals("exactly-once")) {
            usage("--guarantee is at-least-once or exactly-once, not '" + guarantee + "'");
        }
        boolean exactlyOnce = guarantee.equals("exactly-once");
        long checkpointMs = count(args, "checkpoint-interval-ms", exactlyOnce ? 100 : 5000, 0, Long.MAX_VALUE);
        long txTimeoutMs = count(args, "transaction-timeout-ms", 900_000, 1, Integer.MAX_VALUE);
        String txPrefix = args.getOrDefault("transactional-id-prefix", group + "-" + System.currentTimeMillis());
        if (exactlyOnce && checkpointMs == 0) {
            usage("--guarantee exactly-once commits at checkpoints: --checkpoint-interval-ms must be above 0");
        }
        if (exactlyOnce && txTimeoutMs <= checkpointMs) {
            usage("--transaction-timeout-ms must be above the checkpoint interval");
        }

        StreamExecutionEnvironment env =
            FibJob.localEnvironment(slots, taskManagers, checkpointMs, exactlyOnce);
        env.setParallelism(par);
        env.setBufferTimeout(bufferTimeout);

        KafkaSourceBuilder<String> sourceBuilder = KafkaSource.<String>builder()
            .setBootstrapServers(brokers)
            .setTopics(inputTopic)
            .setGroupId(group)
            .setStartingOffsets(OffsetsInitializer.earliest())
            .setValueOnlyDeserializer(new FibJob.Utf8Text())
            .setProperty("client.id.prefix", group);
        KafkaSinkBuilder<Tuple2<String, Long>> sinkBuilder = KafkaSink.<Tuple2<String, Long>>builder()
            .setBootstrapServers(brokers)
            .setRecordSerializer(KafkaRecordSerializationSchema.<Tuple2<String, Long>>builder()
                .setTopic(outputTopic)
                .setKeySerializationSchema(new WordKey())
                .setValueSerializationSchema(new CountJson())
                .build())
            .setProperty("linger.ms", "5");
        if (exactlyOnce) {
            sourceBuilder.setProperty("isolation.level", "read_committed");
            sinkBuilder
                .setDeliveryGuarantee(DeliveryGuarantee.EXACTLY_ONCE)
                .setTransactionalIdPrefix(txPrefix)
                .setProperty("transaction.timeout.ms", Long.toString(txTimeoutMs));
        } else {
            sinkBuilder.setDeliveryGuarantee(DeliveryGuarantee.AT_LEAST_ONCE);
        }

        env.fromSource(sourceBuilder.build(), WatermarkStrategy.noWatermarks(), "kafka-source")
            .flatMap(new Split()).name("split")
            .keyBy(new ByWord())
            .reduce(new Sum()).name("count")
            .sinkTo(sinkBuilder.build()).name("kafka-sink");

        JobClient job = env.executeAsync("fila-wordcount");
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                job.cancel().get(20, TimeUnit.SECONDS);
            } catch (Exception e) {
                // The job may be over already.
            }
            System.err.println("flink: stopped; " + BAD_RECORDS.get() + " bad record(s) skipped");
        }, "cancel-on-exit"));
        try {
            waitUntilRunning(job, 2 * par);
        } catch (Exception e) {
            System.err.println("flink: " + e.getMessage());
            System.exit(1);
        }
        System.out.println("flink: RUNNING (parallelism " + par + ", " + taskManagers + " task manager(s) x "
            + slots + " slot(s), buffer timeout " + bufferTimeout + " ms, " + guarantee + ", checkpoints "
            + (checkpointMs > 0 ? "every " + checkpointMs + " ms" : "off") + ")");
        System.out.flush();
        try {
            job.getJobExecutionResult().get();
        } catch (Exception e) {
            JobStatus status = job.getJobStatus().get(5, TimeUnit.SECONDS);
            if (status != JobStatus.CANCELED && status != JobStatus.CANCELLING) {
                System.err.println("flink: job ended " + status + ": " + e);
                System.exit(1);
            }
        }
    }

    private static void waitUntilRunning(JobClient job, int instances) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(120);
        while (System.nanoTime() < deadline) {
            JobStatus status = job.getJobStatus().get(10, TimeUnit.SECONDS);
            if (status.isGloballyTerminalState()) {
                throw new IllegalStateException("the job ended while starting: " + status);
            }
            if (status == JobStatus.RUNNING && OPENED.get() >= instances) {
                return;
            }
            Thread.sleep(20);
        }
        throw new IllegalStateException("the job did not start within 120 s");
    }

    /** A line {"text": ...} into (word, 1) for each of its words. */
    static final class Split extends RichFlatMapFunction<String, Tuple2<String, Long>> {
        private static final Pattern NOT_ALPHANUMERIC = Pattern.compile("[^\\p{IsAlphabetic}\\p{IsDigit}]+");
        private transient ObjectMapper json;

        @Override
        public void open(OpenContext context) {
            json = new ObjectMapper();
            OPENED.incrementAndGet();
        }

        @Override
        public void flatMap(String value, Collector<Tuple2<String, Long>> out) {
            String text;
            try {
                JsonNode t = json.readTree(value).get("text");
                if (t == null || !t.isTextual()) {
                    throw new IllegalArgumentException("no \"text\" string");
                }
                text = t.asText();
            } catch (Exception e) {
                long n = BAD_RECORDS.incrementAndGet();
                if (n <= 10 || Long.bitCount(n) == 1) {
                    LOG.warn("skipping bad record #{}: {}", n, e.getMessage());
                }
                return;
            }
            for (String w : NOT_ALPHANUMERIC.split(text.toLowerCase(Locale.ROOT))) {
                if (!w.isEmpty()) {
                    out.collect(Tuple2.of(w, 1L));
                }
            }
        }
    }

    static final class ByWord implements KeySelector<Tuple2<String, Long>, String> {
        @Override
        public String getKey(Tuple2<String, Long> t) {
            return t.f0;
        }
    }

    /** The running count of a word. */
    static final class Sum extends RichReduceFunction<Tuple2<String, Long>> {
        @Override
        public void open(OpenContext context) {
            OPENED.incrementAndGet();
        }

        @Override
        public Tuple2<String, Long> reduce(Tuple2<String, Long> a, Tuple2<String, Long> b) {
            return Tuple2.of(a.f0, a.f1 + b.f1);
        }
    }

    static final class WordKey implements SerializationSchema<Tuple2<String, Long>> {
        @Override
        public byte[] serialize(Tuple2<String, Long> t) {
            return t.f0.getBytes(StandardCharsets.UTF_8);
        }
    }

    /** {"word": w, "count": n}; the words here need no JSON escaping
     * beyond quotes and backslashes, which are escaped. */
    static final class CountJson implements SerializationSchema<Tuple2<String, Long>> {
        @Override
        public byte[] serialize(Tuple2<String, Long> t) {
            String w = t.f0.replace("\\", "\\\\").replace("\"", "\\\"");
            return ("{\"word\":\"" + w + "\",\"count\":" + t.f1 + "}").getBytes(StandardCharsets.UTF_8);
        }
    }

    private static Map<String, String> parseArgs(String[] argv) {
        Map<String, String> args = new HashMap<>();
        for (int i = 0; i < argv.length; i++) {
            String a = argv[i];
            if (a.equals("--help") || a.equals("-h")) {
                System.out.println(USAGE);
                System.exit(0);
            }
            if (!a.startsWith("--") || i + 1 >= argv.length) {
                usage("unexpected argument '" + a + "'");
            }
            args.put(a.substring(2), argv[++i]);
        }
        for (String key : args.keySet()) {
            if (!USAGE.contains("--" + key + " ")) {
                usage("unknown option --" + key);
            }
        }
        return args;
    }

    private static long count(Map<String, String> args, String key, long dflt, long min, long max) {
        String s = args.get(key);
        if (s == null) {
            return dflt;
        }
        try {
            long v = Long.parseLong(s);
            if (v >= min && v <= max) {
                return v;
            }
        } catch (NumberFormatException e) {
            // fall through
        }
        usage("--" + key + " needs a whole number between " + min + " and " + max + ", got '" + s + "'");
        return dflt;
    }

    private static void usage(String message) {
        System.err.println("flink: " + message);
        System.err.println(USAGE);
        System.exit(2);
    }
}
