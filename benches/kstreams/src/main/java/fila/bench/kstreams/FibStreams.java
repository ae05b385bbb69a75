package fila.bench.kstreams;

import java.time.Duration;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.errors.LogAndContinueExceptionHandler;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Named;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.TimestampExtractor;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The reference job on Kafka Streams: the input topic, a parse step, five
 * mapValues stages (stage k computes fib(stageK) into fibK), the output
 * topic; at least once, or exactly once (--guarantee exactly-once:
 * processing.guarantee = exactly_once_v2, each commit a Kafka transaction
 * holding the outputs and the input offsets, and the consumer reading
 * committed records only).
 *
 * <p>Latency settings: commit.interval.ms = 100 (a commit also flushes the
 * producer; the at-least-once default is 30 s, the exactly-once default
 * 100 ms, so both run at Kafka Streams' exactly-once default) and producer
 * linger.ms = 5. Exactly once, an output becomes visible to a
 * read-committed reader when its transaction commits.
 *
 * <p>Prints "kstreams: RUNNING" on stdout each time the instance reaches
 * RUNNING, and "kstreams: REBALANCING" when it leaves it for a rebalance.
 */
public final class FibStreams {
    private static final Logger LOG = LoggerFactory.getLogger(FibStreams.class);

    /** Bad records (not JSON, missing or out-of-range fields) skipped. */
    static final AtomicLong BAD_RECORDS = new AtomicLong();

    static final String USAGE = String.join("\n",
        "usage: java -cp 'target/job.jar:target/lib/*' fila.bench.kstreams.FibStreams [options]",
        "  --brokers HOST:PORT[,...]   Kafka bootstrap servers [127.0.0.1:9092]",
        "  --input-topic T             [fila-input] (must exist)",
        "  --output-topic T            [fila-output]",
        "  --application-id ID         application id, shared by the instances [fila-kstreams]",
        "  --threads N                 num.stream.threads [1]",
        "  --guarantee G               at-least-once or exactly-once (exactly_once_v2)",
        "                              [at-least-once]",
        "  --commit-interval-ms MS     commit.interval.ms [100]",
        "  --state-dir DIR             state.dir [java.io.tmpdir/kafka-streams]");

    private FibStreams() {}

    /** The record's own timestamp, or wall-clock time when it has none (-1). */
    public static final class TimestampOrWallClock implements TimestampExtractor {
        @Override
        public long extract(ConsumerRecord<Object, Object> record, long partitionTime) {
            long ts = record.timestamp();
            return ts >= 0 ? ts : System.currentTimeMillis();
        }
    }

    public static void main(String[] argv) throws Exception {
        Map<String, String> args = Args.parse(argv, USAGE, "kstreams");
        String brokers = args.getOrDefault("brokers", "127.0.0.1:9092");
        String inputTopic = args.getOrDefault("input-topic", "fila-input");
        String outputTopic = args.getOrDefault("output-topic", "fila-output");
        String appId = args.getOrDefault("application-id", "fila-kstreams");
        int threads = Args.count(args, "threads", 1, USAGE, "kstreams");
        String stateDir = args.getOrDefault("state-dir",
            System.getProperty("java.io.tmpdir") + "/kafka-streams");
        String guarantee = args.getOrDefault("guarantee", "at-least-once");
        if (!guarantee.equals("at-least-once") && !guarantee.equals("exactly-once")) {
            Args.fail(USAGE, "kstreams", "--guarantee is at-least-once or exactly-once, not '" + guarantee + "'");
        }
        boolean exactlyOnce = guarantee.equals("exactly-once");
        int commitMs = Args.count(args, "commit-interval-ms", 100, 1, 3_600_000, USAGE, "kstreams");

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
        // exactly_once_v2 sets the consumer's isolation.level to
        // read_committed and makes the producer transactional by itself.
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG,
            exactlyOnce ? StreamsConfig.EXACTLY_ONCE_V2 : StreamsConfig.AT_LEAST_ONCE);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, commitMs);
        props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
        props.put(StreamsConfig.DESERIALIZATION_EXCEPTION_HANDLER_CLASS_CONFIG,
            LogAndContinueExceptionHandler.class);
        props.put(StreamsConfig.producerPrefix(ProducerConfig.LINGER_MS_CONFIG), 5);
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");

        StreamsBuilder builder = new StreamsBuilder();
        KStream<byte[], FibRecord> records = builder
            .stream(inputTopic, Consumed.with(Serdes.ByteArray(), Serdes.String())
                .withTimestampExtractor(new TimestampOrWallClock()))
            .flatMapValues(FibStreams::parse, Named.as("parse"));
        for (int k = 0; k < FibRecord.STAGES; k++) {
            final int stage = k;
            records = records.mapValues(r -> r.stage(stage), Named.as("fib" + (k + 1)));
        }
        records
            .mapValues(FibRecord::toJson, Named.as("encode"))
            .to(outputTopic, Produced.with(Serdes.ByteArray(), Serdes.String()));

        KafkaStreams streams = new KafkaStreams(builder.build(), props);
        CountDownLatch done = new CountDownLatch(1);
        streams.setStateListener((now, before) -> {
            if (now == KafkaStreams.State.RUNNING && before != KafkaStreams.State.RUNNING) {
                System.out.println("kstreams: RUNNING (" + threads + " stream thread(s), " + guarantee
                    + ", commit.interval.ms " + commitMs + ")");
            } else if (now == KafkaStreams.State.REBALANCING && before == KafkaStreams.State.RUNNING) {
                System.out.println("kstreams: REBALANCING");
            } else if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
                done.countDown();
            }
            System.out.flush();
        });
        streams.setUncaughtExceptionHandler(e -> {
            LOG.error("stream thread failed", e);
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler
                .StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close(Duration.ofSeconds(20));
            System.err.println("kstreams: stopped; " + BAD_RECORDS.get() + " bad record(s) skipped");
        }, "close-on-exit"));
        streams.start();
        done.await();
        if (streams.state() == KafkaStreams.State.ERROR) {
            System.err.println("kstreams: the instance stopped on an error");
            System.exit(1);
        }
    }

    /** Decodes one input message; a bad one is counted, logged and dropped. */
    static List<FibRecord> parse(String value) {
        try {
            return List.of(FibRecord.parse(value == null ? "" : value));
        } catch (IllegalArgumentException e) {
            long n = BAD_RECORDS.incrementAndGet();
            if (n <= 10 || Long.bitCount(n) == 1) {
                LOG.warn("skipping bad record #{}: {}", n, e.getMessage());
            }
            return Collections.emptyList();
        }
    }
}
