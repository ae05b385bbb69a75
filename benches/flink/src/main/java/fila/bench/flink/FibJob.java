package fila.bench.flink;

import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.flink.api.common.JobStatus;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichFlatMapFunction;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.connector.kafka.sink.KafkaSink;
import org.apache.flink.connector.kafka.sink.KafkaSinkBuilder;
import org.apache.flink.connector.kafka.source.KafkaSource;
import org.apache.flink.connector.kafka.source.KafkaSourceBuilder;
import org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer;
import org.apache.flink.core.execution.JobClient;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.util.Collector;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The reference job on Flink: a Kafka source, a parse step chained to it,
 * five map stages (stage k computes fib(stageK) into fibK), and a Kafka
 * sink, at least once or exactly once (--guarantee), in a local MiniCluster
 * of --taskmanagers task managers. Written against the DataStream API and
 * configuration keys that Flink 1.20 and 2.2 share.
 *
 * <p>Exactly once: checkpoints in EXACTLY_ONCE mode, the source reads
 * committed records only, and the sink writes each checkpoint interval in
 * one Kafka transaction, committed once the checkpoint completes. So an
 * output becomes visible to a read-committed reader only at the checkpoint
 * after it was written: the checkpoint interval sets the latency.
 *
 * <p>Prints "flink: RUNNING" on stdout once the job runs and every operator
 * instance is open; cancels the job on SIGTERM.
 */
public final class FibJob {
    private static final Logger LOG = LoggerFactory.getLogger(FibJob.class);

    /** Bad records (not JSON, missing or out-of-range fields) skipped. */
    static final AtomicLong BAD_RECORDS = new AtomicLong();
    /** Operator instances opened: parse and the five stages. */
    static final AtomicInteger OPENED = new AtomicInteger();

    private static final String USAGE = String.join("\n",
        "usage: java -cp 'target/job.jar:target/lib/*' fila.bench.flink.FibJob [options]",
        "  --brokers HOST:PORT[,...]   Kafka bootstrap servers [127.0.0.1:9092]",
        "  --input-topic T             [fila-input]",
        "  --output-topic T            [fila-output]",
        "  --group G                   consumer group of the source [fila-flink]",
        "  --parallelism SPEC          P (every operator), or M1,M2,M3,M4,M5 (the five",
        "                              stages; the source takes M1's, the sink M5's), or",
        "                              S,M1,M2,M3,M4,M5,K (source, stages, sink) [1]",
        "  --taskmanagers N            task managers in the MiniCluster [1]",
        "  --slots N                   slots per task manager",
        "                              [largest parallelism / task managers, rounded up]",
        "  --buffer-timeout-ms MS      network buffer flush interval; 0 flushes per record [100]",
        "  --guarantee G               at-least-once or exactly-once [at-least-once]",
        "  --checkpoint-interval-ms MS checkpoint interval. At least once, offsets commit",
        "                              and the sink flushes on each; 0 turns them off [5000].",
        "                              Exactly once, each is one transaction of the sink,",
        "                              committed when the checkpoint completes [100]",
        "  --transaction-timeout-ms MS exactly once: the sink producer's",
        "                              transaction.timeout.ms, above the checkpoint interval",
        "                              and at most the broker's transaction.max.timeout.ms",
        "                              [900000]",
        "  --transactional-id-prefix P exactly once: the sink's transactional id prefix,",
        "                              unique per run [GROUP-<start time in ms>]",
        "  --transaction-naming N      exactly once, Flink 2.x: incrementing or pooling,",
        "                              the sink's TransactionNamingStrategy [incrementing]");

    private FibJob() {}

    public static void main(String[] argv) throws Exception {
        Map<String, String> args = parseArgs(argv);
        String brokers = args.getOrDefault("brokers", "127.0.0.1:9092");
        String inputTopic = args.getOrDefault("input-topic", "fila-input");
        String outputTopic = args.getOrDefault("output-topic", "fila-output");
        String group = args.getOrDefault("group", "fila-flink");
        int[] par = parallelism(args.getOrDefault("parallelism", "1"));
        int taskManagers = positive(args, "taskmanagers", 1);
        int maxPar = 0;
        for (int p : par) {
            maxPar = Math.max(maxPar, p);
        }
        int slots = positive(args, "slots", (maxPar + taskManagers - 1) / taskManagers);
        if ((long) slots * taskManagers < maxPar) {
            usage("--slots " + slots + " x --taskmanagers " + taskManagers
                + " is less than the largest parallelism " + maxPar);
        }
        long bufferTimeout = nonNegative(args, "buffer-timeout-ms", 100);
        String guarantee = args.getOrDefault("guarantee", "at-least-once");
        if (!guarantee.equals("at-least-once") && !guarantee.equals("exactly-once")) {
            usage("--guarantee is at-least-once or exactly-once, not '" + guarantee + "'");
        }
        boolean exactlyOnce = guarantee.equals("exactly-once");
        long checkpointMs = nonNegative(args, "checkpoint-interval-ms", exactlyOnce ? 100 : 5000);
        long txTimeoutMs = nonNegative(args, "transaction-timeout-ms", 900_000);
        String txPrefix = args.getOrDefault("transactional-id-prefix", group + "-" + System.currentTimeMillis());
        String naming = args.getOrDefault("transaction-naming", "incrementing");
        if (exactlyOnce) {
            if (checkpointMs == 0) {
                usage("--guarantee exactly-once commits at checkpoints: --checkpoint-interval-ms must be above 0");
            }
            // A transaction stays open from one checkpoint to the next, and
            // until that checkpoint completes; after a failure, until the job
            // restarts and commits it. The broker aborts it at the timeout.
            if (txTimeoutMs <= checkpointMs) {
                usage("--transaction-timeout-ms " + txTimeoutMs + " must be above the checkpoint interval "
                    + checkpointMs);
            }
            if (txTimeoutMs > Integer.MAX_VALUE) {
                usage("--transaction-timeout-ms is too large");
            }
            if (!naming.equals("incrementing") && !naming.equals("pooling")) {
                usage("--transaction-naming is incrementing or pooling, not '" + naming + "'");
            }
        }

        StreamExecutionEnvironment env =
            localEnvironment(slots, taskManagers, checkpointMs, exactlyOnce);
        env.setBufferTimeout(bufferTimeout);

        KafkaSourceBuilder<String> sourceBuilder = KafkaSource.<String>builder()
            .setBootstrapServers(brokers)
            .setTopics(inputTopic)
            .setGroupId(group)
            .setStartingOffsets(OffsetsInitializer.earliest())
            .setValueOnlyDeserializer(new Utf8Text())
            .setProperty("client.id.prefix", group);
        KafkaSinkBuilder<FibRecord> sinkBuilder = KafkaSink.<FibRecord>builder()
            .setBootstrapServers(brokers)
            .setRecordSerializer(KafkaRecordSerializationSchema.<FibRecord>builder()
                .setTopic(outputTopic)
                .setValueSerializationSchema(new JsonSchema())
                .build())
            // Small batches for latency: wait at most 5 ms to fill one.
            .setProperty("linger.ms", "5");
        if (exactlyOnce) {
            // Kafka's consumer reads uncommitted records by default.
            sourceBuilder.setProperty("isolation.level", "read_committed");
            sinkBuilder
                .setDeliveryGuarantee(DeliveryGuarantee.EXACTLY_ONCE)
                .setTransactionalIdPrefix(txPrefix)
                // The builder's default is an hour, which a broker at its
                // default transaction.max.timeout.ms (15 min) refuses.
                .setProperty("transaction.timeout.ms", Long.toString(txTimeoutMs));
            transactionNaming(sinkBuilder, naming);
        } else {
            sinkBuilder.setDeliveryGuarantee(DeliveryGuarantee.AT_LEAST_ONCE);
        }
        KafkaSource<String> source = sourceBuilder.build();
        KafkaSink<FibRecord> sink = sinkBuilder.build();

        DataStream<FibRecord> records = env
            .fromSource(source, WatermarkStrategy.noWatermarks(), "kafka-source")
            .setParallelism(par[0])
            .flatMap(new Parse())
            .name("parse")
            .setParallelism(par[0]);
        for (int k = 0; k < FibRecord.STAGES; k++) {
            records = records.map(new Stage(k)).name("fib" + (k + 1)).setParallelism(par[k + 1]);
        }
        records.sinkTo(sink).name("kafka-sink").setParallelism(par[6]);

        int instances = par[0] + par[1] + par[2] + par[3] + par[4] + par[5];
        JobClient job = env.executeAsync("fila-reference-fibonacci");
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                job.cancel().get(20, TimeUnit.SECONDS);
            } catch (Exception e) {
                // The job may be over already.
            }
            System.err.println("flink: stopped; " + BAD_RECORDS.get() + " bad record(s) skipped");
        }, "cancel-on-exit"));

        try {
            waitUntilRunning(job, instances);
        } catch (Exception e) {
            // The MiniCluster's threads would keep the JVM alive after main
            // returns: a job that cannot start (say, a sink whose producer
            // the broker refuses, restarting over and over) exits here.
            System.err.println("flink: " + e.getMessage());
            System.exit(1);
        }
        System.out.println("flink: RUNNING (parallelism " + String.join("-", spec(par))
            + ", " + taskManagers + " task manager(s) x " + slots + " slot(s), buffer timeout "
            + bufferTimeout + " ms, " + guarantee + ", checkpoints "
            + (checkpointMs > 0 ? "every " + checkpointMs + " ms" : "off")
            + (exactlyOnce ? ", transactional id prefix " + txPrefix + ", transaction timeout "
                + txTimeoutMs + " ms, " + naming + " transaction names" : "") + ")");
        System.out.flush();
        try {
            job.getJobExecutionResult().get();
        } catch (Exception e) {
            // Cancelled from the shutdown hook, or failed: the status says which.
            JobStatus status = job.getJobStatus().get(5, TimeUnit.SECONDS);
            if (status != JobStatus.CANCELED && status != JobStatus.CANCELLING) {
                System.err.println("flink: job ended " + status + ": " + e);
                System.exit(1);
            }
        }
    }

    /**
     * Sets the sink's TransactionNamingStrategy (flink-connector-kafka 4.0
     * and later) by name. The class does not exist in the connector for
     * Flink 1.20, which names transactions as INCREMENTING does; there only
     * "incrementing" is accepted.
     */
    private static void transactionNaming(KafkaSinkBuilder<FibRecord> builder, String naming) {
        Class<?> strategy;
        try {
            strategy = Class.forName("org.apache.flink.connector.kafka.sink.TransactionNamingStrategy");
        } catch (ClassNotFoundException e) {
            if (!naming.equals("incrementing")) {
                usage("--transaction-naming " + naming + " needs flink-connector-kafka 4.0 or later");
            }
            return;
        }
        try {
            Object value = strategy.getField(naming.toUpperCase(java.util.Locale.ROOT)).get(null);
            builder.getClass().getMethod("setTransactionNamingStrategy", strategy).invoke(builder, value);
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("setting the transaction naming strategy " + naming, e);
        }
    }

    /** Waits for the job status RUNNING and every counted operator open. */
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

    /** Decodes input messages; bad ones are counted, logged and dropped. */
    static final class Parse extends RichFlatMapFunction<String, FibRecord> {
        @Override
        public void open(OpenContext context) {
            OPENED.incrementAndGet();
        }

        @Override
        public void flatMap(String value, Collector<FibRecord> out) {
            FibRecord r;
            try {
                r = FibRecord.parse(value);
            } catch (IllegalArgumentException e) {
                long n = BAD_RECORDS.incrementAndGet();
                if (n <= 10 || Long.bitCount(n) == 1) {
                    LOG.warn("skipping bad record #{}: {}", n, e.getMessage());
                }
                return;
            }
            out.collect(r);
        }
    }

    /** Stage k (0-based): fibK = fib(stageK). */
    static final class Stage extends RichMapFunction<FibRecord, FibRecord> {
        private final int k;

        Stage(int k) {
            this.k = k;
        }

        @Override
        public void open(OpenContext context) {
            OPENED.incrementAndGet();
        }

        @Override
        public FibRecord map(FibRecord r) {
            return r.stage(k);
        }
    }

    /** A message value as text; a null value (tombstone) as "", so that it
     * is counted as a bad record instead of failing the job. */
    static final class Utf8Text implements DeserializationSchema<String> {
        @Override
        public String deserialize(byte[] message) {
            return message == null ? "" : new String(message, java.nio.charset.StandardCharsets.UTF_8);
        }

        @Override
        public boolean isEndOfStream(String next) {
            return false;
        }

        @Override
        public TypeInformation<String> getProducedType() {
            return Types.STRING;
        }
    }

    /** The output message as UTF-8 JSON. */
    static final class JsonSchema implements SerializationSchema<FibRecord> {
        @Override
        public byte[] serialize(FibRecord r) {
            return r.toJson().getBytes(java.nio.charset.StandardCharsets.UTF_8);
        }
    }

    private static String[] spec(int[] par) {
        String[] s = new String[par.length];
        for (int i = 0; i < par.length; i++) {
            s[i] = Integer.toString(par[i]);
        }
        return s;
    }

    /** Source, five stages, sink. */
    static int[] parallelism(String spec) {
        String[] parts = spec.split(",");
        int[] v = new int[parts.length];
        for (int i = 0; i < parts.length; i++) {
            try {
                v[i] = Integer.parseInt(parts[i].trim());
            } catch (NumberFormatException e) {
                v[i] = 0;
            }
            if (v[i] < 1) {
                usage("--parallelism: '" + parts[i] + "' is not a count >= 1");
            }
        }
        switch (v.length) {
            case 1:
                return new int[] {v[0], v[0], v[0], v[0], v[0], v[0], v[0]};
            case 5:
                return new int[] {v[0], v[0], v[1], v[2], v[3], v[4], v[4]};
            case 7:
                return v;
            default:
                usage("--parallelism takes 1, 5 or 7 comma-separated counts, got " + v.length);
                return v;
        }
    }

    /**
     * A local MiniCluster of {@code taskManagers} task managers with
     * {@code slots} slots each, every address on 127.0.0.1 and the REST
     * port chosen by the system; checkpoints every {@code checkpointMs}
     * (none at 0), exactly once or at least once.
     */
    static StreamExecutionEnvironment localEnvironment(
            int slots, int taskManagers, long checkpointMs, boolean exactlyOnce) {
        // String keys only: these are the same in Flink 1.20 and 2.x.
        Map<String, String> conf = new HashMap<>();
        conf.put("taskmanager.numberOfTaskSlots", Integer.toString(slots));
        conf.put("local.number-taskmanager", Integer.toString(taskManagers));
        conf.put("minicluster.number-of-taskmanagers", Integer.toString(taskManagers));
        conf.put("rest.address", "127.0.0.1");
        conf.put("rest.bind-address", "127.0.0.1");
        conf.put("rest.bind-port", "0");
        conf.put("rest.port", "0");
        conf.put("jobmanager.rpc.address", "127.0.0.1");
        conf.put("jobmanager.bind-host", "127.0.0.1");
        conf.put("taskmanager.host", "127.0.0.1");
        conf.put("taskmanager.bind-host", "127.0.0.1");
        if (checkpointMs > 0) {
            conf.put("execution.checkpointing.interval", checkpointMs + " ms");
            conf.put("execution.checkpointing.mode", exactlyOnce ? "EXACTLY_ONCE" : "AT_LEAST_ONCE");
        }
        return StreamExecutionEnvironment.createLocalEnvironment(Configuration.fromMap(conf));
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

    private static int positive(Map<String, String> args, String key, int dflt) {
        long v = nonNegative(args, key, dflt);
        if (v < 1 || v > 1024) {
            usage("--" + key + " needs a count between 1 and 1024");
        }
        return (int) v;
    }

    private static long nonNegative(Map<String, String> args, String key, long dflt) {
        String s = args.get(key);
        if (s == null) {
            return dflt;
        }
        try {
            long v = Long.parseLong(s);
            if (v >= 0) {
                return v;
            }
        } catch (NumberFormatException e) {
            // fall through
        }
        usage("--" + key + " needs a whole number >= 0, got '" + s + "'");
        return dflt;
    }

    private static void usage(String message) {
        System.err.println("flink: " + message);
        System.err.println(USAGE);
        System.exit(2);
    }
}
